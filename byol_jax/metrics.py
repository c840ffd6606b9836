"""Collapse statistics beside the losses: does BYOL without batch statistics
collapse (paper §1, §3)? Seen as it happens, long before linear evaluation."""

import jax.numpy as jnp
import numpy as np

from byol_jax import losses


def collapse_std(z: jnp.ndarray) -> jnp.ndarray:
  """Per-dimension std of L2-normalised embeddings [N, D] x sqrt(D), float32.

  SimSiam's collapse monitor (Chen & He, 2021, §4.1) scaled by sqrt(D): about
  1 spread on the unit sphere, 0 collapsed to one point; blind to dimensional
  collapse (the effective rank, Roy & Vetterli 2007, sees that).
  """
  if np.ndim(z) != 2 or np.shape(z)[0] < 2:
    raise ValueError(
        f'z must be [N, D] with N >= 2 embeddings; got shape {np.shape(z)}. '
        'Flatten devices/views into N first.'
    )
  zn = losses.l2_normalize(jnp.asarray(z, jnp.float32))
  return jnp.mean(jnp.std(zn, axis=0)) * jnp.sqrt(jnp.float32(zn.shape[1]))
