"""Conv2D and Linear layers with optional Weight Standardisation.

Conv2D and Linear take `weight_standardization`: W_hat = (W - mean) /
sqrt(var + eps) over the fan-in of each output unit, eps = 1e-4, as defined in
the paper (§2; used with GroupNorm in §3.3). The raw W is the trainable
parameter (gradients flow through the standardisation); there is no extra gain.

Mixed precision: Conv2D and Linear compute in the dtype of their input (cast
the network input to bfloat16 to compute in bfloat16); parameters are always
float32. The normalisation layers (BN, GN, LN, affine) are in norms.py.
"""

from typing import Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

WS_EPS = 1e-4  # paper §2: eps of Weight Standardisation.


def standardize_weight(w: jax.Array, fan_in_axes: Sequence[int],
                       eps: float = WS_EPS) -> jax.Array:
  """Weight Standardisation (paper §2): zero mean, unit variance per output unit.

  Args:
    w: raw weight; the output units are on the last axis.
    fan_in_axes: the axes that make up each output unit's fan-in.
    eps: added to the variance; the standardised kernel has variance
      var / (var + eps) over its fan-in.

  Returns:
    (w - mean) / sqrt(var + eps), same shape and dtype as w.
  """
  mean = jnp.mean(w, axis=fan_in_axes, keepdims=True)
  var = jnp.var(w, axis=fan_in_axes, keepdims=True)
  return (w - mean) * jax.lax.rsqrt(var + eps)


def _fan_in_init(fan_in: int) -> hk.initializers.Initializer:
  # Haiku's default for Conv2D and Linear, which the official BYOL code uses.
  return hk.initializers.TruncatedNormal(stddev=1. / np.sqrt(fan_in))


class Conv2D(hk.Module):
  """2-D convolution (NHWC, no bias, 'SAME' padding), optionally WS.

  The kernel `w` is a float32 [k, k, C_in, output_channels] parameter,
  initialised truncated-normal with stddev 1/sqrt(k * k * C_in).
  """

  def __init__(self, output_channels: int, kernel_shape: int, stride: int = 1,
               weight_standardization: bool = False, name: Optional[str] = None):
    """Creates the module (parameters are created on the first call).

    Args:
      output_channels: C_out.
      kernel_shape: k, the side of the square kernel.
      stride: spatial stride (the same along H and W).
      weight_standardization: standardise the kernel over (k, k, C_in) per
        output channel before use (paper §2).
      name: Haiku module name.
    """
    super().__init__(name=name)
    self.output_channels = output_channels
    self.kernel_shape = kernel_shape
    self.stride = stride
    self.weight_standardization = weight_standardization

  def __call__(self, x: jax.Array) -> jax.Array:
    """Convolves `x`.

    Args:
      x: [N, H, W, C_in] in the compute dtype (float32 or bfloat16).

    Returns:
      [N, ceil(H / stride), ceil(W / stride), C_out], dtype of `x`.
    """
    k, cin = self.kernel_shape, x.shape[-1]
    w = hk.get_parameter('w', (k, k, cin, self.output_channels), jnp.float32,
                         init=_fan_in_init(k * k * cin))
    if self.weight_standardization:
      w = standardize_weight(w, fan_in_axes=(0, 1, 2))
    return jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), window_strides=(self.stride, self.stride),
        padding='SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class Linear(hk.Module):
  """Dense layer, optionally weight-standardised (over its input axis).

  Parameters: float32 `w` [D_in, output_size] and, with a bias, `b`
  [output_size] (zeros at init).
  """

  def __init__(self, output_size: int, with_bias: bool = True,
               weight_standardization: bool = False,
               w_init: Optional[hk.initializers.Initializer] = None,
               name: Optional[str] = None):
    """Creates the module (parameters are created on the first call).

    Args:
      output_size: D_out.
      with_bias: add the bias `b`.
      weight_standardization: standardise `w` over D_in per output unit
        before use (paper §2).
      w_init: initialiser of `w`; None: truncated normal with stddev
        1/sqrt(D_in), Haiku's default.
      name: Haiku module name.
    """
    super().__init__(name=name)
    self.output_size = output_size
    self.with_bias = with_bias
    self.weight_standardization = weight_standardization
    self.w_init = w_init

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies x @ w (+ b).

    Args:
      x: [..., D_in] in the compute dtype (float32 or bfloat16).

    Returns:
      [..., D_out], dtype of `x` (the parameters are cast to it).
    """
    fan_in = x.shape[-1]
    w = hk.get_parameter('w', (fan_in, self.output_size), jnp.float32,
                         init=self.w_init or _fan_in_init(fan_in))
    if self.weight_standardization:
      w = standardize_weight(w, fan_in_axes=(0,))
    out = jnp.dot(x, w.astype(x.dtype))
    if self.with_bias:
      b = hk.get_parameter('b', (self.output_size,), jnp.float32,
                           init=jnp.zeros)
      out = out + b.astype(x.dtype)
    return out
