"""Normalisation layers, one argument of the network code.

The paper's whole subject is the choice of normalisation per network component
(Richemond et al., 2020, Tables 1 and 2), so normalisation is one argument here,
never a fork of the network code:

  * `bn`     BatchNorm, decay 0.9, eps 1e-5 (the official BYOL values), batch
             statistics optionally averaged across replicas (`axis_name`).
  * `gn`     GroupNorm, 16 groups by default (paper §3.3).
  * `ln`     LayerNorm as the paper defines it: normalise over H, W and C,
             i.e. GroupNorm with a single group.
  * `none`   identity (the collapsing "no normalisation" baseline, Table 2).
  * `affine` per-channel scale and offset only, no statistics: the layer the
             BN-free "modified init" of paper §3.2 puts where BN was.

Every kind with parameters stores them as `scale` and `offset` of shape [C]
under the same module name, so a checkpoint path does not depend on the kind
and a BN layer's statistics map one-to-one onto an `affine` layer.

Mixed precision: every normalisation computes its statistics in float32
(`make_norm` casts its input to float32 and the result back); parameters are
float32. The convolution and linear layers are in layers.py.
"""

import dataclasses
from typing import Callable, Optional

import haiku as hk
import jax
import jax.numpy as jnp

NORM_KINDS = ('bn', 'gn', 'ln', 'none', 'affine')
BN_DECAY = 0.9  # official BYOL bn_config.
BN_EPS = 1e-5  # official BYOL bn_config.
GN_GROUPS = 16  # paper §3.3: "GroupNorm with 16 groups".


def check_norm_kind(kind: str, field: str = 'norm') -> str:
  """Validates a normalisation kind.

  Args:
    kind: the kind to check, e.g. 'gn'.
    field: the config field it came from, named in the error.

  Returns:
    `kind` unchanged.

  Raises:
    ValueError: `kind` is not one of NORM_KINDS.
  """
  if kind not in NORM_KINDS:
    raise ValueError(f'{field}={kind!r} is not a normalisation kind; use one '
                     f'of {", ".join(NORM_KINDS)}.')
  return kind


@dataclasses.dataclass(frozen=True)
class NormSpec:
  """Which normalisation a network component uses, and its settings.

  Attributes:
    kind: one of NORM_KINDS.
    groups: GroupNorm groups (kind 'gn' only).
    axis_name: collective axis over which BatchNorm averages its batch
      statistics (cross-replica BN, as the official code does on TPU), or None
      for per-device statistics.
    decay: BatchNorm moving-average decay.
    eps: variance epsilon of bn / gn / ln.

  Raises:
    ValueError: (on construction) kind is not one of NORM_KINDS, or kind is
      'gn' and groups is not a positive int.
  """
  kind: str = 'bn'
  groups: int = GN_GROUPS
  axis_name: Optional[str] = None
  decay: float = BN_DECAY
  eps: float = BN_EPS

  def __post_init__(self):
    check_norm_kind(self.kind)
    if self.kind == 'gn' and (not isinstance(self.groups, int) or
                              self.groups < 1):
      raise ValueError(f'gn groups={self.groups!r} must be a positive integer.')


def as_norm_spec(norm) -> NormSpec:
  """A NormSpec from a NormSpec or a kind string.

  Args:
    norm: a NormSpec (returned as is) or a kind string ('bn', 'gn', ...),
      which gets the default settings.

  Returns:
    The NormSpec.

  Raises:
    TypeError: `norm` is neither a NormSpec nor a str.
    ValueError: the string is not one of NORM_KINDS.
  """
  if isinstance(norm, NormSpec):
    return norm
  if isinstance(norm, str):
    return NormSpec(kind=norm)
  raise TypeError(f'norm must be a NormSpec or a kind string, got {norm!r}.')


def _scale_offset(channels: int, scale_init) -> tuple[jax.Array, jax.Array]:
  scale = hk.get_parameter('scale', (channels,), jnp.float32,
                           init=scale_init or jnp.ones)
  offset = hk.get_parameter('offset', (channels,), jnp.float32, init=jnp.zeros)
  return scale, offset


class BatchNorm(hk.Module):
  """BatchNorm over all axes but the last, with [C] scale/offset parameters.

  In training mode it normalises with the batch statistics (averaged over
  `axis_name` when given: cross-replica BN) and updates moving averages; in
  eval mode it uses the moving averages.

  Statistics: the variance is the mean squared deviation from the (global)
  mean, computed in a second pass, never E[x^2] - E[x]^2, which cancels
  catastrophically when a channel's mean is large against its spread (a
  channel holding 4999 and 5001 would normalise to about +-316 in float32
  instead of +-1). With `axis_name` that costs a second all-reduce.

  Moving averages: zero-debiased exponential moving averages, as the official
  BYOL code's hk.BatchNorm (hk.ExponentialMovingAverage, zero_debias=True):
  Haiku state holds `mean` and `var` as the raw averages h_t = decay h_{t-1}
  + (1 - decay) x_t from h_0 = 0, and `counter` t; eval mode uses h_t / (1 -
  decay^t), which after one update is that batch's statistic exactly. Before
  any update (t = 0: a network fresh from init, e.g. the random-encoder
  baseline) eval mode uses mean 0 and variance 1, i.e. no normalisation.
  """

  def __init__(self, decay: float = BN_DECAY, eps: float = BN_EPS,
               axis_name: Optional[str] = None, scale_init=None,
               name: Optional[str] = None):
    """Creates the module (parameters and state on the first call).

    Args:
      decay: moving-average decay per training step, in [0, 1).
      eps: added to the variance before the reciprocal square root.
      axis_name: collective axis (pmap / shard_map) over which the batch
        statistics are averaged; None: per-device statistics.
      scale_init: initialiser of `scale`; None: ones.
      name: Haiku module name.
    """
    super().__init__(name=name)
    self.decay, self.eps, self.axis_name = decay, eps, axis_name
    self.scale_init = scale_init

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Normalises `x` per channel.

    Args:
      x: [..., C] float32 activations (make_norm casts to float32).
      is_training: use (and update the moving averages with) the batch
        statistics; False: use the debiased moving averages.

    Returns:
      [..., C] float32: (x - mean) / sqrt(var + eps) * scale + offset.
    """
    c = x.shape[-1]
    scale, offset = _scale_offset(c, self.scale_init)
    hidden_mean = hk.get_state('mean', (c,), jnp.float32, init=jnp.zeros)
    hidden_var = hk.get_state('var', (c,), jnp.float32, init=jnp.zeros)
    counter = hk.get_state('counter', (), jnp.int32, init=jnp.zeros)
    if is_training:
      # Skipped at init, which runs outside pmap and discards the output.
      axis = None if hk.running_init() else self.axis_name
      mean, var = batch_moments(x, axis)
      if not hk.running_init():
        d = self.decay
        hk.set_state('mean', d * hidden_mean + (1 - d) * mean)
        hk.set_state('var', d * hidden_var + (1 - d) * var)
        hk.set_state('counter', counter + 1)
    else:
      mean, var = debiased_moments(hidden_mean, hidden_var, counter,
                                   self.decay)
    inv = scale * jax.lax.rsqrt(var + self.eps)
    # (x - mean) first: x * inv - mean * inv would cancel in float32 when
    # the mean is large against the spread (as hk.BatchNorm orders it).
    return (x - mean) * inv + offset


def batch_moments(x: jax.Array, axis_name: Optional[str] = None
                  ) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and variance over all axes but the last, two-pass.

  Args:
    x: [..., C] float32 activations.
    axis_name: average over this collective axis too (equal per-device
      batches: the mean of means is the global mean).

  Returns:
    (mean [C], var [C]): var = mean((x - mean)^2) with the global mean.
    The mean is taken of x - x[0] (a shift by one sample per channel, a
    constant for the gradient), then shifted back: a float32 sum of values
    near 1e4 would otherwise lose about 3e-3 of the mean over 1024 values.
  """
  axes = tuple(range(x.ndim - 1))
  shift = jax.lax.stop_gradient(x[(0,) * (x.ndim - 1)])
  mean = shift + jnp.mean(x - shift, axes)
  if axis_name is not None:
    mean = jax.lax.pmean(mean, axis_name)
  var = jnp.mean(jnp.square(x - mean), axes)
  if axis_name is not None:
    var = jax.lax.pmean(var, axis_name)
  return mean, var


def debiased_moments(hidden_mean, hidden_var, counter, decay: float):
  """Zero-debiased moving averages h / (1 - decay^t).

  Args:
    hidden_mean: [C] float32 raw moving average of the mean, h_t.
    hidden_var: [C] float32 raw moving average of the variance.
    counter: int32 scalar t, the number of updates so far.
    decay: the moving averages' decay per update.

  Returns:
    (mean [C], var [C]) float32; (0, 1) when t = 0 (nothing to debias).
  """
  t = counter.astype(jnp.float32)
  correction = 1. - jnp.power(jnp.float32(decay), t)
  safe = jnp.where(counter > 0, correction, 1.)
  mean = jnp.where(counter > 0, hidden_mean / safe, 0.)
  var = jnp.where(counter > 0, hidden_var / safe, 1.)
  return mean, var


class GroupNorm(hk.Module):
  """GroupNorm over (spatial axes, channels within a group); [C] parameters.

  groups=1 is the paper's LayerNorm (normalise over H, W and C). Accepts
  [N, C] inputs (MLP hidden layers) as well as [N, H, W, C].
  """

  def __init__(self, groups: int, eps: float = BN_EPS, scale_init=None,
               name: Optional[str] = None):
    """Creates the module (parameters on the first call).

    Args:
      groups: number of channel groups; must divide C (1: LayerNorm).
      eps: added to the variance before the reciprocal square root.
      scale_init: initialiser of `scale`; None: ones.
      name: Haiku module name.
    """
    super().__init__(name=name)
    self.groups, self.eps, self.scale_init = groups, eps, scale_init

  def __call__(self, x: jax.Array, is_training: bool = True) -> jax.Array:
    """Normalises each example over its spatial axes and group channels.

    Args:
      x: [N, C] or [N, H, W, C] float32 activations.
      is_training: ignored (no batch statistics: train and eval agree).

    Returns:
      float32, shape of `x`.

    Raises:
      ValueError: `groups` does not divide C.
    """
    del is_training  # No batch statistics: train and eval are the same.
    c = x.shape[-1]
    if c % self.groups:
      raise ValueError(
          f'GroupNorm {self.module_name!r}: groups={self.groups} does not '
          f'divide the {c} channels; set the norm groups (config '
          f'`model.gn_groups`) to a divisor of every channel count.')
    scale, offset = _scale_offset(c, self.scale_init)
    grouped = x.reshape(x.shape[:-1] + (self.groups, c // self.groups))
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)  # spatial + in-group.
    mean = jnp.mean(grouped, axes, keepdims=True)
    var = jnp.var(grouped, axes, keepdims=True)
    normed = ((grouped - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
    return normed * scale + offset


class Affine(hk.Module):
  """Per-channel scale and offset, no statistics (paper §3.2, modified init)."""

  def __init__(self, scale_init=None, name: Optional[str] = None):
    """Creates the module (parameters on the first call).

    Args:
      scale_init: initialiser of the [C] `scale`; None: ones.
      name: Haiku module name.
    """
    super().__init__(name=name)
    self.scale_init = scale_init

  def __call__(self, x: jax.Array, is_training: bool = True) -> jax.Array:
    """Returns x * scale + offset.

    Args:
      x: [..., C] float32 activations.
      is_training: ignored (no statistics).

    Returns:
      float32, shape of `x`.
    """
    del is_training
    scale, offset = _scale_offset(x.shape[-1], self.scale_init)
    return x * scale + offset


NormFn = Callable[[jax.Array, bool], jax.Array]


def make_norm(norm, name: str, zero_init: bool = False) -> NormFn:
  """Builds the normalisation `norm` as a function (x, is_training) -> x.

  Args:
    norm: a NormSpec or a kind string (see NORM_KINDS).
    name: module name; the same for every kind, so checkpoint paths are stable.
    zero_init: initialise the scale to 0 (last norm of a residual block).

  Returns:
    A callable applying the normalisation. Statistics are computed in float32
    and the result is cast back to the input dtype.
  """
  spec = as_norm_spec(norm)
  scale_init = jnp.zeros if zero_init else None
  if spec.kind == 'none':
    return lambda x, is_training: x
  if spec.kind == 'bn':
    module = BatchNorm(spec.decay, spec.eps, spec.axis_name, scale_init,
                       name=name)
  elif spec.kind in ('gn', 'ln'):
    groups = spec.groups if spec.kind == 'gn' else 1
    module = GroupNorm(groups, spec.eps, scale_init, name=name)
  else:  # affine
    module = Affine(scale_init, name=name)

  def apply(x, is_training):
    return module(x.astype(jnp.float32), is_training).astype(x.dtype)
  return apply
