"""BYOL's projector / predictor MLP and the linear classifier head."""

from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp

from byol_jax.models import layers
from byol_jax.models import norms

# BYOL (Grill et al., 2020, §3.3) and this paper: hidden 4096, output 256.
MLP_HIDDEN_SIZE = 4096
MLP_OUTPUT_SIZE = 256


class MLP(hk.Module):
  """Linear(hidden) -> norm -> ReLU -> Linear(output, no bias), the BYOL head.

  As the official code's MLP (byol/utils/networks.py): the hidden layer has a
  bias, the output layer none.

  Used for both the projector g and the predictor q; each gets its own norm
  kind (paper Table 1 varies them independently).
  """

  def __init__(self, hidden_size: int = MLP_HIDDEN_SIZE,
               output_size: int = MLP_OUTPUT_SIZE, norm='bn',
               weight_standardization: bool = False, dtype=jnp.float32,
               name: Optional[str] = None):
    """Args:
      hidden_size: width of the hidden layer.
      output_size: width of the output.
      norm: a norms.NormSpec or kind string for the hidden layer's norm.
      weight_standardization: standardise both linear layers' weights.
      dtype: compute dtype; the output is float32.
      name: module name ('projector' / 'predictor').
    """
    super().__init__(name=name)
    self.hidden_size, self.output_size = hidden_size, output_size
    self.norm = norms.as_norm_spec(norm)
    self.ws, self.dtype = weight_standardization, dtype

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Projects (or predicts) a batch of vectors.

    Args:
      x: [N, D_in] float features; cast to the compute dtype.
      is_training: BatchNorm in the hidden layer uses batch statistics.

    Returns:
      [N, output_size] float32.
    """
    x = x.astype(self.dtype)
    x = layers.Linear(self.hidden_size, weight_standardization=self.ws,
                      name='linear_0')(x)
    x = norms.make_norm(self.norm, 'norm_0')(x, is_training)
    x = jax.nn.relu(x)
    x = layers.Linear(self.output_size, with_bias=False,
                      weight_standardization=self.ws, name='linear_1')(x)
    return x.astype(jnp.float32)


class LinearClassifier(hk.Module):
  """Logits from representations (linear evaluation and online monitor)."""

  def __init__(self, num_classes: int, zero_init: bool = False,
               name: Optional[str] = 'classifier'):
    """Args:
      num_classes: number of logits.
      zero_init: zero weights (uniform initial logits). Only for plain SGD:
        under LARS the trust ratio eta*||w||/||g|| keeps zero weights near
        zero, so the online classifier (trained with LARS, as in the official
        code) uses Haiku's default truncated-normal init.
      name: module name.
    """
    super().__init__(name=name)
    self.num_classes, self.zero_init = num_classes, zero_init

  def __call__(self, x: jax.Array) -> jax.Array:
    """Logits of a batch of representations.

    Args:
      x: [N, D] representations (computed in float32).

    Returns:
      [N, num_classes] float32 logits.
    """
    return layers.Linear(self.num_classes,
                         w_init=jnp.zeros if self.zero_init else None,
                         name='linear')(x.astype(jnp.float32))
