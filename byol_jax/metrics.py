"""Collapse statistics of embeddings: pure jnp functions.

The paper is about whether BYOL without batch statistics collapses (paper §1,
§3); these numbers show collapse as it happens, long before linear
evaluation. The training step reports `collapse_std` of the projections and
representations (methods/networks.py); they sit here, beside the losses,
so that methods/ needs nothing from evaluation/.
"""
import jax.numpy as jnp
import numpy as np

from byol_jax import losses



def check_embeddings(name: str, z) -> None:
  """Checks that z is a matrix of at least two embeddings.

  Args:
    name: the argument's name, for the message.
    z: the embeddings (any array-like).

  Raises:
    ValueError: z is not [N, D] with N >= 2.
  """
  if np.ndim(z) != 2 or np.shape(z)[0] < 2:
    raise ValueError(f'{name} must be [N, D] with N >= 2 embeddings; got shape '
                     f'{np.shape(z)}. Flatten devices/views into N first.')


def collapse_std(z: jnp.ndarray) -> jnp.ndarray:
  """Per-dimension std of L2-normalised embeddings, times sqrt(D).

  Each row z_i is normalised to unit length; the standard deviation of every
  dimension over the batch is averaged over the D dimensions and multiplied by
  sqrt(D). For embeddings spread uniformly on the unit sphere each coordinate
  has variance 1/D, so the statistic is about 1; when all embeddings collapse
  to one point (the trivial solution BYOL must avoid) it is 0. It measures
  spread around the mean direction, not dimensionality (embeddings filling a
  random low-dimensional subspace can still score ~1; the effective rank
  of the embeddings, Roy & Vetterli 2007, sees that). This is the
  collapse monitor of SimSiam (Chen & He, 2021, §4.1, "std of l2-normalized
  output", there without the sqrt(D) scale), applied here to BYOL projections.

  Args:
    z: [N, D] embeddings (N >= 2), any float dtype.

  Returns:
    float32 scalar, ~1 healthy, ~0 collapsed.
  """
  check_embeddings('z', z)
  zn = losses.l2_normalize(jnp.asarray(z, jnp.float32))
  return jnp.mean(jnp.std(zn, axis=0)) * jnp.sqrt(jnp.float32(zn.shape[1]))
