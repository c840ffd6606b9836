"""Losses of BYOL and of the SimCLR baseline: pure functions of arrays.

* `regression_loss` / `byol_loss`: BYOL's normalised regression loss
  (Grill et al., 2020, eq. 2), symmetrised over the two views (section 3.1,
  L^BYOL = L + L~).
* `infonce_loss`: SimCLR's NT-Xent (Chen et al., 2020, eq. 1 and Alg. 1), the
  baseline of Richemond et al. (2020) Table 1, with negatives taken from the
  whole global batch across devices.
* `softmax_cross_entropy`, `topk_correct`: for the online linear classifier
  and for linear evaluation.

Every function works per device; the caller pmeans what it needs over the
collective axis.
"""
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

# SimCLR masks self-similarities by subtracting a large number from the
# logits (official simclr/tf2/objective.py uses LARGE_NUM = 1e9). A finite
# value keeps the softmax free of inf - inf = NaN.
_LARGE_NUM = 1e9


def l2_normalize(x: jnp.ndarray, axis: int = -1,
                 eps: float = 1e-12) -> jnp.ndarray:
  """L2-normalises `x` along `axis`, safely for all-zero vectors.

  As the official BYOL code (byol/utils/helpers.py: l2_normalize), `eps`
  bounds the *squared* norm from below, so a zero vector maps to zero rather
  than to NaN, and its gradient stays finite.

  Args:
    x: array to normalise.
    axis: the axis holding the vector coordinates.
    eps: lower bound on the squared norm.

  Returns:
    `x / max(||x||, sqrt(eps))`, same shape and dtype as `x`.
  """
  square_sum = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(square_sum, eps))


def regression_loss(x: jnp.ndarray, y: jnp.ndarray,
                    eps: float = 1e-12) -> jnp.ndarray:
  """BYOL's per-example loss ||x/|x| - y/|y|||^2 = 2 - 2 cos(x, y).

  Grill et al. (2020), eq. 2. Ranges over [0, 4]: 0 for parallel vectors, 2
  for orthogonal ones, 4 for opposite ones.

  Args:
    x: [B, D] predictions (any leading shape; the last axis is the feature).
    y: [B, D] targets, same shape as `x`.
    eps: lower bound on the squared norm in the L2 normalisation.

  Returns:
    [B] float32 loss per example (the leading shape of `x`).

  Raises:
    ValueError: x and y differ in shape.
  """
  if x.shape != y.shape:
    raise ValueError(f'regression_loss: x and y must have the same shape, got '
                     f'{x.shape} and {y.shape}.')
  # Losses are computed in float32 even when the network runs in bfloat16.
  normed_x = l2_normalize(x.astype(jnp.float32), axis=-1, eps=eps)
  normed_y = l2_normalize(y.astype(jnp.float32), axis=-1, eps=eps)
  return jnp.sum(jnp.square(normed_x - normed_y), axis=-1)


def byol_loss(online_pred_1: jnp.ndarray, online_pred_2: jnp.ndarray,
              target_proj_1: jnp.ndarray,
              target_proj_2: jnp.ndarray) -> jnp.ndarray:
  """Symmetrised BYOL loss, mean over the (local) batch.

  Grill et al. (2020), section 3.1: L^BYOL = L + L~, where L compares the
  online prediction of view 1 with the target projection of view 2 and L~
  swaps the views. The
  official code (byol/byol_experiment.py) sums the two views' regression
  losses per example and then averages over the batch, which is what this
  does; the value therefore lies in [0, 8].

  The target projections pass through `jax.lax.stop_gradient` here, so the
  target network never receives gradient whatever the caller does (paper
  section 3.1: the loss is minimised with respect to the online parameters
  only; the target is updated by the moving average of eq. 1).

  Args:
    online_pred_1: [B, D] online prediction q(z) of view 1.
    online_pred_2: [B, D] online prediction of view 2.
    target_proj_1: [B, D] target projection z' of view 1.
    target_proj_2: [B, D] target projection of view 2.

  Returns:
    Scalar loss: mean_b [regression_loss(p1, sg(z2)) + regression_loss(p2,
    sg(z1))]. With equal local batch sizes, the pmean of this over devices is
    the loss of the global batch.
  """
  target_proj_1 = jax.lax.stop_gradient(target_proj_1)
  target_proj_2 = jax.lax.stop_gradient(target_proj_2)
  loss = (regression_loss(online_pred_1, target_proj_2) +
          regression_loss(online_pred_2, target_proj_1))
  return jnp.mean(loss)


def softmax_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray,
                          where: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Mean softmax cross-entropy with integer labels (optax's, per example).

  Args:
    logits: [B, C] unnormalised log-probabilities.
    labels: [B] integer class indices in [0, C); with `where`, the unselected
      ones may be anything (e.g. -1 for unlabelled examples).
    where: optional [B] bool: average over these examples only (0 when none).

  Returns:
    Scalar: mean over the (selected) batch of -log softmax(logits)[label].
  """
  safe = jnp.maximum(labels, 0) if where is not None else labels
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), safe.astype(jnp.int32))
  return masked_mean(per_example, where)


def masked_mean(x: jnp.ndarray, where: Optional[jnp.ndarray]) -> jnp.ndarray:
  """The mean of the selected entries of `x`.

  Args:
    x: array of any shape, e.g. [B] per-example losses.
    where: None, or a bool (or 0/1) array shaped like `x`.

  Returns:
    Scalar of x's dtype: mean(x[where]), 0 when nothing is selected; mean(x)
    for where=None.
  """
  if where is None:
    return jnp.mean(x)
  where = where.astype(x.dtype)
  return jnp.sum(x * where) / jnp.maximum(jnp.sum(where), 1.)


def topk_correct(logits: jnp.ndarray, labels: jnp.ndarray,
                 k: int) -> jnp.ndarray:
  """Whether each label lies among the k largest logits.

  Ties are broken as `jax.lax.top_k` does (lower index first), like the
  official BYOL helpers.topk_accuracy's argsort.

  Args:
    logits: [B, C] scores.
    labels: [B] integer class indices.
    k: how many top classes count as correct, 1 <= k <= C.

  Returns:
    [B] float32, 1.0 where the label is in the top k, else 0.0.

  Raises:
    ValueError: k is outside [1, C].
  """
  num_classes = logits.shape[-1]
  if not 1 <= k <= num_classes:
    raise ValueError(f'topk_correct: k must be in [1, {num_classes}] (the '
                     f'number of classes), got k={k}.')
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
  """SimCLR's NT-Xent loss with negatives from the whole global batch.

  Chen et al. (2020), eq. 1: for each anchor, the positive is the other view of
  the same image and the negatives are the 2N - 2 other embeddings of the
  global batch of N images (both views), with cosine similarity / temperature
  as logits. As SimCLR does on TPUs (simclr/tf2/objective.py, via
  tpu_cross_replica_concat), when `axis_name` is given z1 and z2 are
  all-gathered over that axis, each device scores its local anchors against
  the gathered embeddings, and the positive's label is offset by
  axis_index * local_batch.

  Averaging: the SimCLR paper (Alg. 1) averages over all 2N anchors,
  L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]; this returns that mean over the
  2 * local_batch local anchors. The official SimCLR code instead returns
  loss_a + loss_b (a sum of the two views' means, twice this value); we follow
  the paper. Since every device holds the same local batch size, the mean over
  devices of the per-device losses (jax.lax.pmean) equals the one-device loss
  on the full global batch exactly, and the same holds for gradients of shared
  parameters once they are pmean'd: all_gather is differentiable and its
  transpose (psum_scatter) routes every device's cotangent back to the device
  that produced the embedding. (Gradients with respect to a device's own
  *inputs* z1/z2 are therefore n_devices times those of the global mean loss;
  pmean of parameter gradients divides that back out.)

  Args:
    z1: [n, D] projections of view 1 on this device (not yet normalised).
    z2: [n, D] projections of view 2, row i the same image as z1[i].
    temperature: softmax temperature tau > 0 (SimCLR uses 0.1 for ImageNet at
      large batch sizes, 0.5 for CIFAR-10).
    axis_name: collective axis over which to gather negatives (the pmap or
      shard_map axis), or None for a single device.

  Returns:
    (loss, metrics): loss is the scalar mean cross-entropy over this device's
    2n anchors; metrics holds 'infonce_loss' (same value) and
    'contrastive_top1_acc', the fraction of local anchors whose most similar
    other embedding is their positive.

  Raises:
    ValueError: temperature <= 0, or z1 and z2 are not 2-D of one shape.
  """
  if temperature <= 0:
    raise ValueError(f'infonce_loss: temperature must be > 0, got '
                     f'{temperature}.')
  if z1.ndim != 2 or z1.shape != z2.shape:
    raise ValueError(f'infonce_loss: z1 and z2 must both be [batch, dim] of '
                     f'the same shape, got {z1.shape} and {z2.shape}.')
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
