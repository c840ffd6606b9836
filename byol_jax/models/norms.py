"""Normalisation layers: one argument of the network code, never a fork.

The paper's subject is the choice of normalisation per network component
(Richemond et al., 2020, Tables 1 and 2):

  * `bn`     BatchNorm, decay 0.9, eps 1e-5 (the official BYOL values), batch
             statistics optionally averaged across replicas (`axis_name`).
  * `gn`     GroupNorm, 16 groups by default (paper §3.3).
  * `ln`     LayerNorm as the paper defines it: over H, W and C, i.e.
             GroupNorm with one group.
  * `none`   identity (the collapsing "no normalisation" baseline, Table 2).
  * `affine` per-channel scale and offset only: what the modified init of
             paper §3.2 puts where BN was.

Every kind stores `scale` and `offset` of shape [C] under the same module name,
so checkpoint paths do not depend on the kind and a BN layer's statistics map
one-to-one onto an `affine` layer. Statistics are float32 whatever the compute
dtype.
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
  """Returns `kind`; a ValueError naming `field` unless it is in NORM_KINDS."""
  if kind not in NORM_KINDS:
    raise ValueError(
        f'{field}={kind!r} is not a normalisation kind; use one '
        f'of {", ".join(NORM_KINDS)}.'
    )
  return kind


@dataclasses.dataclass(frozen=True)
class NormSpec:
  """Which normalisation a network component uses, and its settings.

  Attributes:
    kind: one of NORM_KINDS.
    groups: GroupNorm groups (kind 'gn' only).
    axis_name: collective axis over which BatchNorm averages its batch
      statistics (cross-replica BN, as the official code on TPU), or None.
    decay: BatchNorm moving-average decay.
    eps: variance epsilon of bn / gn / ln.
  """

  kind: str = 'bn'
  groups: int = GN_GROUPS
  axis_name: Optional[str] = None
  decay: float = BN_DECAY
  eps: float = BN_EPS

  def __post_init__(self):
    check_norm_kind(self.kind)
    if self.kind == 'gn' and (
        not isinstance(self.groups, int) or self.groups < 1
    ):
      raise ValueError(f'gn groups={self.groups!r} must be a positive integer.')


def as_norm_spec(norm) -> NormSpec:
  """`norm` if a NormSpec, else NormSpec(kind=norm); TypeError otherwise."""
  if isinstance(norm, NormSpec):
    return norm
  if isinstance(norm, str):
    return NormSpec(kind=norm)
  raise TypeError(f'norm must be a NormSpec or a kind string, got {norm!r}.')


def _scale_offset(channels: int, scale_init) -> tuple[jax.Array, jax.Array]:
  scale = hk.get_parameter(
      'scale', (channels,), jnp.float32, init=scale_init or jnp.ones
  )
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

  def __init__(
      self,
      decay: float = BN_DECAY,
      eps: float = BN_EPS,
      axis_name: Optional[str] = None,
      scale_init=None,
      name: Optional[str] = None,
  ):
    """decay in [0, 1) per step; axis_name None: per-device statistics."""
    super().__init__(name=name)
    self.decay, self.eps, self.axis_name = decay, eps, axis_name
    self.scale_init = scale_init

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    """[..., C] float32 -> (x - mean) / sqrt(var + eps) * scale + offset.

    Training mode uses (and updates the moving averages with) the batch
    statistics; eval mode the debiased moving averages.
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
      mean, var = debiased_moments(hidden_mean, hidden_var, counter, self.decay)
    inv = scale * jax.lax.rsqrt(var + self.eps)
    # (x - mean) first: x * inv - mean * inv would cancel in float32 when
    # the mean is large against the spread (as hk.BatchNorm orders it).
    return (x - mean) * inv + offset


def batch_moments(
    x: jax.Array, axis_name: Optional[str] = None
) -> tuple[jax.Array, jax.Array]:
  """Per-channel (mean [C], var [C]) over all axes but the last, two-pass.

  The mean is taken of x - x[0] (a per-channel shift, constant for the
  gradient) and shifted back: a float32 sum of values near 1e4 otherwise loses
  about 3e-3 of the mean over 1024 values. var = mean((x - mean)^2) with the
  global mean (pmean'd over `axis_name` when given: equal per-device batches).
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
  """Debiased moving averages (mean, var) = h / (1 - decay^t); (0, 1) at t=0."""
  t = counter.astype(jnp.float32)
  correction = 1.0 - jnp.power(jnp.float32(decay), t)
  safe = jnp.where(counter > 0, correction, 1.0)
  mean = jnp.where(counter > 0, hidden_mean / safe, 0.0)
  var = jnp.where(counter > 0, hidden_var / safe, 1.0)
  return mean, var


class GroupNorm(hk.Module):
  """GroupNorm over (spatial axes, channels of a group); [C] parameters.

  groups=1 is the paper's LayerNorm. Accepts [N, C] (MLP hidden layers) and
  [N, H, W, C]; no batch statistics, so train and eval agree.
  """

  def __init__(
      self,
      groups: int,
      eps: float = BN_EPS,
      scale_init=None,
      name: Optional[str] = None,
  ):
    super().__init__(name=name)
    self.groups, self.eps, self.scale_init = groups, eps, scale_init

  def __call__(self, x: jax.Array, is_training: bool = True) -> jax.Array:
    """float32 [N, C] or [N, H, W, C] -> same; ValueError unless groups | C."""
    del is_training  # No batch statistics: train and eval are the same.
    c = x.shape[-1]
    if c % self.groups:
      raise ValueError(
          f'GroupNorm {self.module_name!r}: groups={self.groups} does not '
          f'divide the {c} channels; set the norm groups (config '
          f'`model.gn_groups`) to a divisor of every channel count.'
      )
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
    super().__init__(name=name)
    self.scale_init = scale_init

  def __call__(self, x: jax.Array, is_training: bool = True) -> jax.Array:
    del is_training
    scale, offset = _scale_offset(x.shape[-1], self.scale_init)
    return x * scale + offset


NormFn = Callable[[jax.Array, bool], jax.Array]


def make_norm(norm, name: str, zero_init: bool = False) -> NormFn:
  """Builds the normalisation `norm` as a function (x, is_training) -> x.

  Args:
    norm: a NormSpec or a kind string (NORM_KINDS).
    name: module name, the same for every kind (stable checkpoint paths).
    zero_init: initialise the scale to 0 (last norm of a residual block).

  Returns:
    A callable computing in float32 and returning the input's dtype.
  """
  spec = as_norm_spec(norm)
  scale_init = jnp.zeros if zero_init else None
  if spec.kind == 'none':
    return lambda x, is_training: x
  if spec.kind == 'bn':
    module = BatchNorm(
        spec.decay, spec.eps, spec.axis_name, scale_init, name=name
    )
  elif spec.kind in ('gn', 'ln'):
    groups = spec.groups if spec.kind == 'gn' else 1
    module = GroupNorm(groups, spec.eps, scale_init, name=name)
  else:  # affine
    module = Affine(scale_init, name=name)

  def apply(x, is_training):
    return module(x.astype(jnp.float32), is_training).astype(x.dtype)

  return apply
