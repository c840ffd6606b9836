"""The numpy host stream for in-memory sources (`digits`, `synthetic`).

Implements the contract of pipeline.py's docstring without TensorFlow, so
GPU machines without it can train on these sources. `layout` is
pipeline.py's `_Layout` (host batch geometry and this host's shard).
"""
import numpy as np

from byol_jax.data import crops


def _split_devices(batch, layout):
  """[host_batch, ...] leaves -> [local_devices, per_device, ...]."""
  return {k: v.reshape((layout.devices, layout.per_device) + v.shape[1:])
          for k, v in batch.items()}


def random_iterator(source, split, layout, seed, start_step, image_size,
                    views, flip, min_area=crops.AREA_RANGE[0]):
  """Infinite numpy iterator over an in-memory split; see pipeline.py.

  Args:
    source: a `sources.InMemorySource`.
    split: a raw split name of `source` (already resolved).
    layout: pipeline.py's `_Layout`.
    seed: data seed.
    start_step: first batch to yield.
    image_size: output side.
    views: crops per image (2 for BYOL, 1 for the linear probe).
    flip: whether to flip each view horizontally with probability 1/2.

  Yields:
    {'view1', ..., 'label'} numpy arrays [local_devices, per_device, ...].
  """
  images, labels = source.images[split], source.labels[split]
  n, h, w = images.shape[:3]
  shard = layout.shard(n)
  cache = {}

  def epoch(e):  # (permutation of the shard, uniforms per global index)
    if e not in cache:
      if len(cache) > 1:
        cache.pop(min(cache))
      perm = np.random.default_rng([seed, crops.SALT_PERM, e]).permutation(
          shard)
      u = np.random.default_rng([seed, crops.SALT_CROP, e]).random(
          (n, views, crops.NUM_U + 1))
      cache[e] = perm, u
    return cache[e]

  step = start_step
  while True:
    pos = step * layout.host_batch + np.arange(layout.host_batch)
    idx = np.empty_like(pos)
    u = np.empty((layout.host_batch, views, crops.NUM_U + 1))
    for e in np.unique(pos // len(shard)):
      sel = pos // len(shard) == e
      perm, ue = epoch(int(e))
      idx[sel] = perm[pos[sel] % len(shard)]
      u[sel] = ue[idx[sel]]
    x = images[idx]
    out = {}
    for v in range(views):
      box = crops.sample_crop(np, u[:, v, :crops.NUM_U], h, w, min_area)
      out[f'view{v + 1}'] = crops.np_crop_resize(
          x, box, image_size, (u[:, v, crops.NUM_U] < 0.5) if flip else None)
    out['label'] = labels[idx].astype(np.int32)
    yield _split_devices(out, layout)
    step += 1


def eval_iterator(source, split, layout, image_size):
  """One padded pass over this host's shard of an in-memory split.

  Args:
    source: a `sources.InMemorySource`.
    split: a raw split name of `source` (already resolved).
    layout: pipeline.py's `_Layout`.
    image_size: output side.

  Yields:
    {'image', 'label', 'mask'} numpy arrays [local_devices, per_device, ...].
  """
  images, labels = source.images[split], source.labels[split]
  n, h, w = images.shape[:3]
  shard = layout.shard(n)
  box = crops.center_crop(np, h, w, image_size)
  for b in range(layout.num_eval_batches(n)):
    idx = shard[b * layout.host_batch:(b + 1) * layout.host_batch]
    mask = np.arange(layout.host_batch) < len(idx)
    idx = np.concatenate([idx, np.zeros(layout.host_batch - len(idx), int)])
    image = crops.np_crop_resize(images[idx], box, image_size)
    yield _split_devices({'image': image * mask[:, None, None, None],
                         'label': np.where(mask, labels[idx], 0).astype(
                             np.int32), 'mask': mask}, layout)
