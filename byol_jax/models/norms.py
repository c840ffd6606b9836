"""Normalisation layers, the subject of Richemond et al. (2020), Tables 1-2:
`ln` is LayerNorm as the paper defines it (over H, W and C: GN with one group),
`none` the collapsing baseline (Table 2), `affine` the modified init's (§3.2).
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


def check_norm_kind(kind: str, field: str = 'norm') -> None:
  """A ValueError naming `field` unless `kind` is in NORM_KINDS."""
  if kind not in NORM_KINDS:
    raise ValueError(
        f'{field}={kind!r} is not a normalisation kind; use one '
        f'of {", ".join(NORM_KINDS)}.'
    )


@dataclasses.dataclass(frozen=True)
class NormSpec:
  """A component's normalisation: kind (NORM_KINDS), GN groups, the axis BN
  averages its statistics over (cross-replica BN, as the official code on
  TPU; None: per device), BN's moving-average decay."""

  kind: str = 'bn'
  groups: int = GN_GROUPS
  axis_name: Optional[str] = None
  decay: float = BN_DECAY

  def __post_init__(self):
    check_norm_kind(self.kind)
    if self.kind == 'gn' and (
        not isinstance(self.groups, int) or self.groups < 1
    ):
      raise ValueError(f'gn groups={self.groups!r} must be a positive integer.')


def _scale_offset(channels: int, zero_init: bool) -> tuple[jax.Array, ...]:
  init = jnp.zeros if zero_init else jnp.ones
  scale = hk.get_parameter('scale', (channels,), jnp.float32, init=init)
  offset = hk.get_parameter('offset', (channels,), jnp.float32, init=jnp.zeros)
  return scale, offset


@dataclasses.dataclass
class BatchNorm(hk.Module):
  """BatchNorm over all axes but the last, with [C] scale/offset parameters.

  Training: batch statistics (`batch_moments`, over `axis_name` when given);
  moving averages h_t = decay h_{t-1} + (1 - decay) x_t from h_0 = 0, read in
  eval mode as h_t / (1 - decay^t), zero-debiased as the official code's
  hk.BatchNorm (at t = 0, the random-encoder baseline: mean 0, variance 1).
  """

  decay: float = BN_DECAY
  axis_name: Optional[str] = None
  zero_init: bool = False
  name: Optional[str] = None

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    """[..., C] float32 -> (x - mean) / sqrt(var + eps) * scale + offset."""
    c = x.shape[-1]
    scale, offset = _scale_offset(c, self.zero_init)
    hidden_mean = hk.get_state('mean', (c,), jnp.float32, init=jnp.zeros)
    hidden_var = hk.get_state('var', (c,), jnp.float32, init=jnp.zeros)
    counter = hk.get_state('counter', (), jnp.int32, init=jnp.zeros)
    if is_training:
      # Skipped at init, which runs outside pmap and discards the output.
      init = hk.running_init()
      mean, var = batch_moments(x, None if init else self.axis_name)
      if not init:
        d = self.decay
        hk.set_state('mean', d * hidden_mean + (1 - d) * mean)
        hk.set_state('var', d * hidden_var + (1 - d) * var)
        hk.set_state('counter', counter + 1)
    else:
      seen = counter > 0
      decayed = jnp.power(jnp.float32(self.decay), counter.astype(jnp.float32))
      correction = jnp.where(seen, 1.0 - decayed, 1.0)
      mean = jnp.where(seen, hidden_mean / correction, 0.0)
      var = jnp.where(seen, hidden_var / correction, 1.0)
    inv = scale * jax.lax.rsqrt(var + BN_EPS)
    # (x - mean) first: x * inv - mean * inv would cancel in float32 when
    # the mean is large against the spread (as hk.BatchNorm orders it).
    return (x - mean) * inv + offset


def batch_moments(
    x: jax.Array, axis_name: Optional[str] = None
) -> tuple[jax.Array, jax.Array]:
  """Per-channel (mean [C], var [C]) over all axes but the last, two-pass.

  var = mean((x - mean)^2): E[x^2] - E[x]^2 cancels (4999 and 5001 would
  normalise to +-316 in float32, not +-1). The mean is of x - x[0] (constant
  for the gradient): a float32 sum of 1024 values near 1e4 loses 3e-3 of it.
  With `axis_name` both are pmean'd (equal per-device batches).
  """
  axes = tuple(range(x.ndim - 1))
  shift = jax.lax.stop_gradient(x[(0,) * (x.ndim - 1)])
  pmean = lambda v: v if axis_name is None else jax.lax.pmean(v, axis_name)
  mean = pmean(shift + jnp.mean(x - shift, axes))
  return mean, pmean(jnp.mean(jnp.square(x - mean), axes))


@dataclasses.dataclass
class GroupNorm(hk.Module):
  """GroupNorm over (H, W, a group's channels); groups=1: the paper's LN."""

  groups: int
  zero_init: bool = False
  name: Optional[str] = None

  def __call__(self, x: jax.Array, is_training: bool = True) -> jax.Array:
    """float32 [N, C] or [N, H, W, C] -> same; ValueError unless groups | C."""
    c = x.shape[-1]
    if c % self.groups:
      raise ValueError(
          f'GroupNorm {self.module_name!r}: groups={self.groups} does not '
          f'divide the {c} channels; set model.gn_groups to divide every layer.'
      )
    scale, offset = _scale_offset(c, self.zero_init)
    grouped = x.reshape(x.shape[:-1] + (self.groups, c // self.groups))
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)  # spatial + in-group.
    mean = jnp.mean(grouped, axes, keepdims=True)
    var = jnp.var(grouped, axes, keepdims=True)
    normed = ((grouped - mean) * jax.lax.rsqrt(var + BN_EPS)).reshape(x.shape)
    return normed * scale + offset


@dataclasses.dataclass
class Affine(hk.Module):
  """Per-channel scale and offset, no statistics (paper §3.2, modified init)."""

  zero_init: bool = False
  name: Optional[str] = None

  def __call__(self, x: jax.Array, is_training: bool = True) -> jax.Array:
    scale, offset = _scale_offset(x.shape[-1], self.zero_init)
    return x * scale + offset


def make_norm(
    norm, name: str, zero_init: bool = False
) -> Callable[[jax.Array, bool], jax.Array]:
  """The normalisation `norm` (NormSpec or kind) as fn(x, is_training) -> x.

  `name` is the module name of every kind (stable checkpoint paths);
  zero_init: scale 0 at init (a residual block's last norm). The function
  computes in float32 and returns the input's dtype.
  """
  spec = norm if isinstance(norm, NormSpec) else NormSpec(kind=norm)
  if spec.kind == 'none':
    return lambda x, is_training: x
  if spec.kind == 'bn':
    module = BatchNorm(spec.decay, spec.axis_name, zero_init, name)
  elif spec.kind == 'affine':
    module = Affine(zero_init, name)
  else:
    module = GroupNorm(spec.groups if spec.kind == 'gn' else 1, zero_init, name)
  return lambda x, t: module(x.astype(jnp.float32), t).astype(x.dtype)
