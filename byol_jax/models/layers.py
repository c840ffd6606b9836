"""Conv2D and Linear with optional Weight Standardisation (paper §2, §3.3).

The raw W is the trainable parameter (gradients flow through the
standardisation; no extra gain). Layers compute in their input's dtype;
parameters are float32.
"""

from typing import Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

WS_EPS = 1e-4  # paper §2: eps of Weight Standardisation.


def standardize_weight(
    w: jax.Array, fan_in_axes: Sequence[int], eps: float = WS_EPS
) -> jax.Array:
  """Weight Standardisation (paper §2): (w - mean) / sqrt(var + eps).

  Args:
    w: raw weight, output units on the last axis.
    fan_in_axes: the axes of each output unit's fan-in.
    eps: added to the variance (1e-4 in the paper).

  Returns:
    The standardised weight, shape and dtype of `w`.
  """
  mean = jnp.mean(w, axis=fan_in_axes, keepdims=True)
  var = jnp.var(w, axis=fan_in_axes, keepdims=True)
  return (w - mean) * jax.lax.rsqrt(var + eps)


def _fan_in_init(fan_in: int) -> hk.initializers.Initializer:
  # Haiku's default for Conv2D and Linear, which the official BYOL code uses.
  return hk.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(fan_in))


class Conv2D(hk.Module):
  """2-D convolution (NHWC, no bias, 'SAME' padding), optionally WS.

  Args:
    output_channels: C_out.
    kernel_shape: k, the side of the square kernel.
    stride: spatial stride along H and W.
    weight_standardization: standardise the float32 [k, k, C_in, C_out] kernel
      over (k, k, C_in) before use (initialised truncated-normal with stddev
      1/sqrt(k * k * C_in), Haiku's default).
    name: Haiku module name.

  Call: [N, H, W, C_in] -> [N, ceil(H / stride), ceil(W / stride), C_out],
  in the input's dtype.
  """

  def __init__(
      self,
      output_channels: int,
      kernel_shape: int,
      stride: int = 1,
      weight_standardization: bool = False,
      name: Optional[str] = None,
  ):
    super().__init__(name=name)
    self.output_channels = output_channels
    self.kernel_shape = kernel_shape
    self.stride = stride
    self.weight_standardization = weight_standardization

  def __call__(self, x: jax.Array) -> jax.Array:
    k, cin = self.kernel_shape, x.shape[-1]
    w = hk.get_parameter(
        'w',
        (k, k, cin, self.output_channels),
        jnp.float32,
        init=_fan_in_init(k * k * cin),
    )
    if self.weight_standardization:
      w = standardize_weight(w, fan_in_axes=(0, 1, 2))
    return jax.lax.conv_general_dilated(
        x,
        w.astype(x.dtype),
        window_strides=(self.stride, self.stride),
        padding='SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )


class Linear(hk.Module):
  """Dense layer x @ w (+ b), optionally weight-standardised over D_in.

  Args:
    output_size: D_out.
    with_bias: add the bias `b` [D_out] (zeros at init).
    weight_standardization: standardise `w` [D_in, D_out] per output unit.
    w_init: initialiser of `w`; None: truncated normal, stddev 1/sqrt(D_in).
    name: Haiku module name.

  Call: [..., D_in] -> [..., D_out], in the input's dtype.
  """

  def __init__(
      self,
      output_size: int,
      with_bias: bool = True,
      weight_standardization: bool = False,
      w_init: Optional[hk.initializers.Initializer] = None,
      name: Optional[str] = None,
  ):
    super().__init__(name=name)
    self.output_size = output_size
    self.with_bias = with_bias
    self.weight_standardization = weight_standardization
    self.w_init = w_init

  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    w = hk.get_parameter(
        'w',
        (fan_in, self.output_size),
        jnp.float32,
        init=self.w_init or _fan_in_init(fan_in),
    )
    if self.weight_standardization:
      w = standardize_weight(w, fan_in_axes=(0,))
    out = jnp.dot(x, w.astype(x.dtype))
    if self.with_bias:
      b = hk.get_parameter(
          'b', (self.output_size,), jnp.float32, init=jnp.zeros
      )
      out = out + b.astype(x.dtype)
    return out
