"""Conv2D and Linear with optional Weight Standardisation (paper §2, §3.3).

The raw W is the parameter (no extra gain), float32, initialised truncated-
normal with stddev 1/sqrt(fan-in) (Haiku's default, as the official code);
layers compute in their input's dtype.
"""

import dataclasses
from typing import Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

WS_EPS = 1e-4  # paper §2: eps of Weight Standardisation.


def standardize_weight(w: jax.Array, fan_in_axes: Sequence[int]) -> jax.Array:
  """Weight Standardisation (paper §2): (w - mean) / sqrt(var + WS_EPS) over
  each output unit's (last axis) `fan_in_axes`; shape and dtype of `w`."""
  mean = jnp.mean(w, axis=fan_in_axes, keepdims=True)
  var = jnp.var(w, axis=fan_in_axes, keepdims=True)
  return (w - mean) * jax.lax.rsqrt(var + WS_EPS)


def _weight(shape, fan_in_axes, ws: bool, init=None) -> jax.Array:
  fan_in = np.prod([shape[a] for a in fan_in_axes])
  init = init or hk.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(fan_in))
  w = hk.get_parameter('w', shape, jnp.float32, init=init)
  return standardize_weight(w, fan_in_axes) if ws else w


@dataclasses.dataclass
class Conv2D(hk.Module):
  """k x k convolution (NHWC, no bias, 'SAME' padding), optionally WS.

  [N, H, W, C_in] -> [N, ceil(H / stride), ceil(W / stride), output_channels];
  WS standardises the [k, k, C_in, C_out] kernel over (k, k, C_in).
  """

  output_channels: int
  kernel_shape: int
  stride: int = 1
  weight_standardization: bool = False
  name: Optional[str] = None

  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_shape
    shape = (k, k, x.shape[-1], self.output_channels)
    w = _weight(shape, (0, 1, 2), self.weight_standardization)
    return jax.lax.conv_general_dilated(
        x,
        w.astype(x.dtype),
        window_strides=(self.stride, self.stride),
        padding='SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )


@dataclasses.dataclass
class Linear(hk.Module):
  """Dense layer [..., D_in] -> [..., output_size]: x @ w (+ b, zeros at init).

  WS standardises w [D_in, D_out] per output unit; w_init None: the default.
  """

  output_size: int
  with_bias: bool = True
  weight_standardization: bool = False
  w_init: Optional[hk.initializers.Initializer] = None
  name: Optional[str] = None

  def __call__(self, x: jax.Array) -> jax.Array:
    shape, ws = (x.shape[-1], self.output_size), self.weight_standardization
    w = _weight(shape, (0,), ws, self.w_init)
    out = jnp.dot(x, w.astype(x.dtype))
    if self.with_bias:
      b = hk.get_parameter('b', (self.output_size,), jnp.float32, jnp.zeros)
      out = out + b.astype(x.dtype)
    return out
