"""Losses of BYOL and of the SimCLR baseline: pure, per-device functions.

The caller pmeans what it needs over the collective axis.
"""

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

# SimCLR masks self-similarities by subtracting a large number from the
# logits (official simclr/tf2/objective.py uses LARGE_NUM = 1e9). A finite
# value keeps the softmax free of inf - inf = NaN.
_LARGE_NUM = 1e9


def l2_normalize(
    x: jnp.ndarray, axis: int = -1, eps: float = 1e-12
) -> jnp.ndarray:
  """x / max(||x||, sqrt(eps)) along `axis`: zero vectors map to 0, not NaN.

  As the official code (byol/utils/helpers.py): `eps` bounds the squared norm.
  """
  square_sum = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(square_sum, eps))


def regression_loss(
    x: jnp.ndarray, y: jnp.ndarray, eps: float = 1e-12
) -> jnp.ndarray:
  """BYOL's per-example loss ||x/|x| - y/|y|||^2 = 2 - 2 cos(x, y) (eq. 2).

  Args:
    x: [..., D] predictions, any float dtype (computed in float32).
    y: targets, shape of `x`.
    eps: lower bound on the squared norm in the normalisation.

  Returns:
    float32 [...] in [0, 4] (0 parallel, 2 orthogonal, 4 opposite).

  Raises:
    ValueError: x and y differ in shape.
  """
  if x.shape != y.shape:
    raise ValueError(
        f'regression_loss: x and y must have the same shape, got '
        f'{x.shape} and {y.shape}.'
    )
  # Losses are computed in float32 even when the network runs in bfloat16.
  normed_x = l2_normalize(x.astype(jnp.float32), axis=-1, eps=eps)
  normed_y = l2_normalize(y.astype(jnp.float32), axis=-1, eps=eps)
  return jnp.sum(jnp.square(normed_x - normed_y), axis=-1)


def byol_loss(
    online_pred_1: jnp.ndarray,
    online_pred_2: jnp.ndarray,
    target_proj_1: jnp.ndarray,
    target_proj_2: jnp.ndarray,
) -> jnp.ndarray:
  """Symmetrised BYOL loss (paper §3.1, L^BYOL = L + L~), mean over the batch.

  As the official code (byol/byol_experiment.py): the two views' regression
  losses summed per example, then averaged, so the value lies in [0, 8]. The
  target projections are stop-gradient'ed here: the target never receives a
  gradient, whatever the caller does (it moves by the EMA of eq. 1).

  Args:
    online_pred_1, online_pred_2: [B, D] online predictions of views 1 and 2.
    target_proj_1, target_proj_2: [B, D] target projections of views 1 and 2.

  Returns:
    float32 scalar mean_b [l(p1, sg(z2)) + l(p2, sg(z1))]; with equal local
    batches its pmean over devices is the global batch's loss.
  """
  target_proj_1 = jax.lax.stop_gradient(target_proj_1)
  target_proj_2 = jax.lax.stop_gradient(target_proj_2)
  loss = regression_loss(online_pred_1, target_proj_2) + regression_loss(
      online_pred_2, target_proj_1
  )
  return jnp.mean(loss)


def softmax_cross_entropy(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    where: Optional[jnp.ndarray] = None,
) -> jnp.ndarray:
  """Mean cross-entropy of [B, C] logits and [B] int labels (optax's).

  With `where` ([B] bool) only the selected examples count (0 when none), and
  the others' labels may be anything (e.g. -1 for unlabelled examples).
  """
  safe = jnp.maximum(labels, 0) if where is not None else labels
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), safe.astype(jnp.int32)
  )
  return masked_mean(per_example, where)


def masked_mean(x: jnp.ndarray, where: Optional[jnp.ndarray]) -> jnp.ndarray:
  """mean(x[where]) (0 when nothing is selected); mean(x) for where=None."""
  if where is None:
    return jnp.mean(x)
  where = where.astype(x.dtype)
  return jnp.sum(x * where) / jnp.maximum(jnp.sum(where), 1.0)


def topk_correct(
    logits: jnp.ndarray, labels: jnp.ndarray, k: int
) -> jnp.ndarray:
  """[B] float32: 1 where the label is among the k largest of [B, C] logits.

  Ties as `jax.lax.top_k` (lower index first), as the official
  helpers.topk_accuracy. ValueError unless 1 <= k <= C.
  """
  num_classes = logits.shape[-1]
  if not 1 <= k <= num_classes:
    raise ValueError(
        f'topk_correct: k must be in [1, {num_classes}] (the '
        f'number of classes), got k={k}.'
    )
  _, top = jax.lax.top_k(logits, k)
  hit = jnp.any(top == labels[..., None].astype(top.dtype), axis=-1)
  return hit.astype(jnp.float32)


def infonce_loss(
    z1: jnp.ndarray,
    z2: jnp.ndarray,
    *,
    temperature: float,
    axis_name: Optional[str] = None,
) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """SimCLR's NT-Xent (Chen et al., 2020, eq. 1) with global-batch negatives.

  For each anchor the positive is the other view of its image; the negatives are
  the 2N - 2 other embeddings of the global batch of N images, with cosine
  similarity / temperature as logits. As SimCLR on TPU (simclr/tf2/objective.py,
  tpu_cross_replica_concat), with `axis_name` z1 and z2 are all-gathered and the
  positive's label is offset by axis_index * local_batch.

  Averaging follows the paper (Alg. 1: the mean over all 2N anchors), not the
  official code's loss_a + loss_b (twice this). With equal local batches the
  pmean of this loss, and of the parameter gradients (all_gather transposes to
  psum_scatter), equals the one-device loss on the global batch exactly.

  Args:
    z1: [n, D] projections of view 1 on this device (not yet normalised).
    z2: [n, D] projections of view 2, row i the same image as z1[i].
    temperature: tau > 0 (SimCLR: 0.1 for ImageNet at large batch, 0.5 for
      CIFAR-10).
    axis_name: the collective axis to gather negatives over, or None.

  Returns:
    (loss, metrics): the float32 scalar mean cross-entropy over the local 2n
    anchors; metrics 'infonce_loss' (the same) and 'contrastive_top1_acc'.

  Raises:
    ValueError: temperature <= 0, or z1 and z2 not 2-D of one shape.
  """
  if temperature <= 0:
    raise ValueError(
        f'infonce_loss: temperature must be > 0, got ' f'{temperature}.'
    )
  if z1.ndim != 2 or z1.shape != z2.shape:
    raise ValueError(
        f'infonce_loss: z1 and z2 must both be [batch, dim] of '
        f'the same shape, got {z1.shape} and {z2.shape}.'
    )
  local_batch = z1.shape[0]
  # float32 even under bfloat16 compute: 1/temperature magnifies rounding.
  z1 = l2_normalize(z1.astype(jnp.float32), axis=-1)
  z2 = l2_normalize(z2.astype(jnp.float32), axis=-1)

  if axis_name is None:
    z1_all, z2_all = z1, z2
    offset = 0
  else:
    # [devices * n, D], device-major, so local row i is global row
    # axis_index * n + i.
    z1_all = jax.lax.all_gather(z1, axis_name, tiled=True)
    z2_all = jax.lax.all_gather(z2, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * local_batch
  global_batch = z1_all.shape[0]

  labels = jnp.arange(local_batch) + offset  # the positive, in [0, N).
  # Each anchor's similarity with itself is masked (it is neither positive
  # nor negative); it sits in the same-view block at column `labels`.
  self_mask = jax.nn.one_hot(labels, global_batch, dtype=z1.dtype)

  logits_12 = z1 @ z2_all.T / temperature  # view-1 anchors vs all view 2.
  logits_11 = z1 @ z1_all.T / temperature - self_mask * _LARGE_NUM
  logits_21 = z2 @ z1_all.T / temperature
  logits_22 = z2 @ z2_all.T / temperature - self_mask * _LARGE_NUM
  # [n, 2N]: the positive is column `labels` (the other view); the other
  # 2N - 2 unmasked columns are the negatives.
  logits_1 = jnp.concatenate([logits_12, logits_11], axis=-1)
  logits_2 = jnp.concatenate([logits_21, logits_22], axis=-1)
  logits = jnp.concatenate([logits_1, logits_2], axis=0)  # [2n, 2N]
  all_labels = jnp.concatenate([labels, labels], axis=0)

  loss = softmax_cross_entropy(logits, all_labels)
  acc = jnp.mean(topk_correct(logits, all_labels, 1))
  return loss, {'infonce_loss': loss, 'contrastive_top1_acc': acc}
