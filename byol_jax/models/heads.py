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
  """BYOL's projector / predictor: Linear -> norm -> ReLU -> Linear (no bias).

  As the official code's MLP (byol/utils/networks.py). Each head gets its own
  norm kind (paper Table 1 varies them independently).

  Args:
    hidden_size, output_size: widths (paper: 4096, 256).
    norm: a norms.NormSpec or kind string for the hidden layer.
    weight_standardization: standardise both linear layers' weights.
    dtype: compute dtype.
    name: 'projector' / 'predictor'.

  Call: [N, D_in] -> [N, output_size] float32.
  """

  def __init__(
      self,
      hidden_size: int = MLP_HIDDEN_SIZE,
      output_size: int = MLP_OUTPUT_SIZE,
      norm='bn',
      weight_standardization: bool = False,
      dtype=jnp.float32,
      name: Optional[str] = None,
  ):
    super().__init__(name=name)
    self.hidden_size, self.output_size = hidden_size, output_size
    self.norm = norms.as_norm_spec(norm)
    self.ws, self.dtype = weight_standardization, dtype

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    x = x.astype(self.dtype)
    x = layers.Linear(
        self.hidden_size, weight_standardization=self.ws, name='linear_0'
    )(x)
    x = norms.make_norm(self.norm, 'norm_0')(x, is_training)
    x = jax.nn.relu(x)
    x = layers.Linear(
        self.output_size,
        with_bias=False,
        weight_standardization=self.ws,
        name='linear_1',
    )(x)
    return x.astype(jnp.float32)


class LinearClassifier(hk.Module):
  """Logits [N, num_classes] float32 from representations [N, D].

  zero_init (uniform initial logits) is for plain SGD only: under LARS the trust
  ratio eta*||w||/||g|| keeps zero weights near zero, so the online classifier
  (LARS, as the official code) uses Haiku's truncated-normal default.
  """

  def __init__(
      self,
      num_classes: int,
      zero_init: bool = False,
      name: Optional[str] = 'classifier',
  ):
    super().__init__(name=name)
    self.num_classes, self.zero_init = num_classes, zero_init

  def __call__(self, x: jax.Array) -> jax.Array:
    return layers.Linear(
        self.num_classes,
        w_init=jnp.zeros if self.zero_init else None,
        name='linear',
    )(x.astype(jnp.float32))
