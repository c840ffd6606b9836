"""BYOL's projector / predictor MLP and the linear classifier head."""

import dataclasses
from typing import Any, Optional

import haiku as hk
import jax
import jax.numpy as jnp

from byol_jax.models import layers
from byol_jax.models import norms


@dataclasses.dataclass
class MLP(hk.Module):
  """BYOL's projector / predictor: Linear -> norm -> ReLU -> Linear (no bias).

  As the official networks.py: [N, D_in] -> [N, output_size] float32.
  Attributes: hidden_size, output_size (BYOL §3.3: 4096, 256); norm (NormSpec
  or kind of the hidden layer, per head: paper Table 1); weight_standardization
  of both linear layers; dtype (compute).
  """

  hidden_size: int = 4096
  output_size: int = 256
  norm: Any = 'bn'
  weight_standardization: bool = False
  dtype: Any = jnp.float32
  name: Optional[str] = None

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    ws = self.weight_standardization
    x = x.astype(self.dtype)
    x = layers.Linear(self.hidden_size, True, ws, name='linear_0')(x)
    x = jax.nn.relu(norms.make_norm(self.norm, 'norm_0')(x, is_training))
    x = layers.Linear(self.output_size, False, ws, name='linear_1')(x)
    return x.astype(jnp.float32)


@dataclasses.dataclass
class LinearClassifier(hk.Module):
  """Logits [N, num_classes] float32 from representations [N, D].

  zero_init (uniform initial logits) is for plain SGD only: under LARS the
  trust ratio eta*||w||/||g|| keeps zero weights near zero, so the online
  classifier (LARS, as the official code) uses Haiku's truncated normal.
  """

  num_classes: int
  zero_init: bool = False
  name: Optional[str] = 'classifier'

  def __call__(self, x: jax.Array) -> jax.Array:
    w_init = jnp.zeros if self.zero_init else None
    linear = layers.Linear(self.num_classes, w_init=w_init, name='linear')
    return linear(x.astype(jnp.float32))
