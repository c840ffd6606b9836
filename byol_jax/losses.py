"""Losses of BYOL and the SimCLR baseline, per device (the caller pmeans), and
the collapse statistic the step reports beside them (paper §1, §3)."""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

# Subtracted from self-similarity logits, as the official SimCLR
# objective.py; finite, so the softmax has no inf - inf = NaN.
_LARGE_NUM = 1e9


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, sqrt(eps)) along the last axis (official helpers.py)."""
  square_sum = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(square_sum, eps))


def collapse_std(z: jax.Array) -> jax.Array:
  """Per-dimension std of L2-normalised embeddings [N, D] x sqrt(D), float32.

  SimSiam's collapse monitor (Chen & He, 2021, §4.1) scaled by sqrt(D): about
  1 spread on the unit sphere, 0 collapsed to one point; blind to dimensional
  collapse (the effective rank, Roy & Vetterli 2007, sees that).
  """
  if jnp.ndim(z) != 2 or jnp.shape(z)[0] < 2:
    raise ValueError(
        f'z must be [N, D] with N >= 2 embeddings; got shape {jnp.shape(z)}. '
        'Flatten devices/views into N first.'
    )
  zn = l2_normalize(jnp.asarray(z, jnp.float32))
  return jnp.mean(jnp.std(zn, axis=0)) * jnp.sqrt(jnp.float32(zn.shape[1]))


def regression_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """BYOL's per-example loss ||x/|x| - y/|y|||^2 = 2 - 2 cos(x, y) (eq. 2).

  Args:
    x: [..., D] predictions, any float dtype (computed in float32).
    y: targets, shape of `x` (else ValueError).

  Returns:
    float32 [...] in [0, 4] (0 parallel, 2 orthogonal, 4 opposite).
  """
  if x.shape != y.shape:
    raise ValueError(
        f'regression_loss: x and y must have the same shape, got '
        f'{x.shape} and {y.shape}.'
    )
  x, y = (l2_normalize(v.astype(jnp.float32)) for v in (x, y))
  return jnp.sum(jnp.square(x - y), axis=-1)


def byol_loss(
    online_pred_1: jax.Array,
    online_pred_2: jax.Array,
    target_proj_1: jax.Array,
    target_proj_2: jax.Array,
) -> jax.Array:
  """Symmetrised BYOL loss (paper §3.1, L^BYOL = L + L~) of [B, D] online
  predictions and target projections of views 1 and 2: float32
  mean_b [l(p1, sg(z2)) + l(p2, sg(z1))] (official byol_experiment.py); with
  equal local batches its pmean over devices is the global batch's loss."""
  sg = jax.lax.stop_gradient
  loss = regression_loss(online_pred_1, sg(target_proj_2))
  return jnp.mean(loss + regression_loss(online_pred_2, sg(target_proj_1)))


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, where: Optional[jax.Array] = None
) -> jax.Array:
  """Mean cross-entropy of [B, C] logits and [B] int labels (optax's).

  With `where` ([B] bool) only the selected examples count (0 when none), and
  the others' labels may be anything (e.g. -1 for unlabelled examples).
  """
  safe = jnp.maximum(labels, 0) if where is not None else labels
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), safe.astype(jnp.int32)
  )
  return masked_mean(per_example, where)


def masked_mean(x: jax.Array, where: Optional[jax.Array]) -> jax.Array:
  """mean(x[where]) (0 when nothing is selected); mean(x) for where=None."""
  if where is None:
    return jnp.mean(x)
  where = where.astype(x.dtype)
  return jnp.sum(x * where) / jnp.maximum(jnp.sum(where), 1.0)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """[B] float32: 1 where the label is among the k largest of [B, C] logits.

  Ties as `jax.lax.top_k` (lower index first), as the official
  helpers.topk_accuracy. ValueError unless 1 <= k <= C.
  """
  num_classes = logits.shape[-1]
  if not 1 <= k <= num_classes:
    raise ValueError(f'topk_correct: k must be in [1, {num_classes}], got {k}.')
  _, top = jax.lax.top_k(logits, k)
  hit = jnp.any(top == labels[..., None].astype(top.dtype), axis=-1)
  return hit.astype(jnp.float32)


def infonce_loss(
    z1: jax.Array,
    z2: jax.Array,
    *,
    temperature: float,
    axis_name: Optional[str] = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SimCLR's NT-Xent (Chen et al., 2020, eq. 1) with global-batch negatives.

  An anchor's positive: its image's other view; negatives: the 2N - 2 other
  embeddings of the global batch (all-gathered as SimCLR's
  tpu_cross_replica_concat); logits cosine / temperature; the mean over 2N
  anchors (Alg. 1; the official loss_a + loss_b is twice it).

  Args:
    z1, z2: [n, D] projections of views 1 and 2 on this device, row i the
      same image (2-D of one shape, else ValueError).
    temperature: > 0, else ValueError (SimCLR: 0.1 ImageNet, 0.5 CIFAR-10).
    axis_name: the collective axis to gather negatives over, or None.

  Returns:
    (float32 mean cross-entropy over the local 2n anchors, metrics
    'infonce_loss' (the same) and 'contrastive_top1_acc').
  """
  if temperature <= 0:
    raise ValueError(f'infonce_loss: temperature={temperature}; use one > 0.')
  if z1.ndim != 2 or z1.shape != z2.shape:
    raise ValueError(
        f'infonce_loss: z1 and z2 must both be [batch, dim] of '
        f'the same shape, got {z1.shape} and {z2.shape}.'
    )
  n = z1.shape[0]
  # float32 even under bfloat16 compute: 1/temperature magnifies rounding.
  z1, z2 = (l2_normalize(z.astype(jnp.float32)) for z in (z1, z2))
  z1_all, z2_all, offset = z1, z2, 0
  if axis_name is not None:  # [devices * n, D]; local row i: global offset + i
    z1_all, z2_all = jax.lax.all_gather((z1, z2), axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * n
  labels = jnp.arange(n) + offset  # the positive, in [0, N).
  # Each anchor's similarity with itself (column `labels` of the same-view
  # block) is masked: neither positive nor negative.
  self_mask = jax.nn.one_hot(labels, z1_all.shape[0], dtype=z1.dtype)

  def anchor_logits(anchors, other_view, same_view):  # [n, 2N]
    cross = anchors @ other_view.T / temperature  # holds the positive.
    same = anchors @ same_view.T / temperature - self_mask * _LARGE_NUM
    return jnp.concatenate([cross, same], axis=-1)

  logits = jnp.concatenate(
      [anchor_logits(z1, z2_all, z1_all), anchor_logits(z2, z1_all, z2_all)]
  )  # [2n, 2N]
  all_labels = jnp.concatenate([labels, labels], axis=0)
  loss = softmax_cross_entropy(logits, all_labels)
  acc = jnp.mean(topk_correct(logits, all_labels, 1))
  return loss, {'infonce_loss': loss, 'contrastive_top1_acc': acc}
