"""Input pipelines: per-host batches [local_devices, per_device, ...] of crops.

Batch k is stream positions [k B, (k + 1) B), every draw stateless in (seed,
position), so start_step=k resumes exactly (docs/ARCHITECTURE.md, data/).
"""

import collections
import functools
import itertools
from typing import Any, Iterator

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from byol_jax.data import crops
from byol_jax.data import sources
from byol_jax.data import tf_stream
from byol_jax.hosts import parallel


class _Layout:
  """Per-host batch geometry (None: this process's)."""

  def __init__(self, global_batch, process_index, process_count, devices):
    self.index = jax.process_index() if process_index is None else process_index
    self.count = jax.process_count() if process_count is None else process_count
    self.devices = devices or jax.local_device_count()
    total = self.count * self.devices
    if global_batch <= 0 or global_batch % total:
      raise ValueError(
          f'global_batch_size={global_batch}: not a positive multiple of the '
          f'{total} devices of all processes; use e.g. '
          f'{max(1, round(global_batch / total)) * total}'
      )
    self.host_batch = global_batch // self.count
    self.per_device = self.host_batch // self.devices
    # This host's example indices of n: strided, so classes stay balanced.
    self.shard = lambda n: np.arange(self.index, n, self.count)


def num_eval_batches(
    num_examples: int, global_batch_size: int, process_count: int | None = None
) -> int:
  """Batches every host's eval iterator yields: its shard padded to a batch."""
  count = jax.process_count() if process_count is None else process_count
  per_host = -(-num_examples // count)
  return -(-per_host // (global_batch_size // count))


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: tuple) -> np.ndarray:
  return np.random.default_rng(list(seed)).permutation(n)


def stream_indices(positions: np.ndarray, n: int, seed: tuple) -> np.ndarray:
  """Example index at each stream position; epoch e permutes with [*seed, e]."""
  epochs = positions // n
  idx = np.empty_like(positions)
  for e in np.unique(epochs):
    sel = epochs == e
    idx[sel] = _permutation(n, (*map(int, seed), int(e)))[positions[sel] % n]
  return idx


def make_pretrain_iterator(
    source: sources.Source,
    *,
    split: str,
    global_batch_size: int,
    image_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    local_device_count: int | None = None,
    num_threads: int | None = None,
    min_crop_area: float = crops.AREA_RANGE[0],
    in_memory_on: str = 'device',
    views: int = 2,
    flip: bool = False,
) -> Iterator[dict[str, Any]]:
  """Endless {'view1', 'view2': float32 [devices, per_device, S, S, 3], label};
  numpy when streaming; None host arguments: this process's."""
  layout = _Layout(
      global_batch_size, process_index, process_count, local_device_count
  )
  split = source.resolve_split(split)
  crop = dict(
      size=image_size, views=views, flip=flip, min_area=float(min_crop_area)
  )
  if not isinstance(source, sources.InMemorySource):
    args = (source, split, layout, seed, start_step, num_threads, crop)
    return tf_stream.random_iterator(*args)
  devices, put, gather, labels = _place(source, split, layout, in_memory_on)
  global_batch = layout.host_batch * layout.count
  # This host's positions within a global batch, [devices, per_device].
  offsets = layout.index * layout.host_batch + np.arange(layout.host_batch)
  offsets = offsets.reshape(layout.devices, -1)
  positions = put(offsets.astype(np.int32))
  # The raw threefry key of seed (jax.random.PRNGKey's for seeds < 2**32),
  # built on the host so that any seed < 2**62 works without jax_enable_x64.
  seed_key = np.asarray([seed >> 32, seed & 0xFFFFFFFF], np.uint32)
  key = np.asarray(jax.random.fold_in(seed_key, crops.SALT_CROP))
  keys = put(np.broadcast_to(key, (len(devices), 2)))
  fn = _compiled(_random_views, devices, in_memory_on == 'host', **crop)

  def batches():
    for step in itertools.count(start_step):
      idx = stream_indices(
          step * global_batch + offsets, len(labels), (seed, crops.SALT_PERM)
      ).astype(np.int32)
      steps = np.full(len(devices), step, np.int32)
      out = fn(gather(idx), put(idx), positions, put(steps), keys)
      yield {**out, 'label': put(labels[idx])}

  return batches()


def make_supervised_iterator(source: sources.Source, **kwargs):
  """make_pretrain_iterator's, one crop flipped half the time: image, label."""
  it = make_pretrain_iterator(source, views=1, flip=True, **kwargs)
  return ({'image': b['view1'], 'label': b['label']} for b in it)


def make_eval_iterator(
    source: sources.Source,
    *,
    split: str,
    global_batch_size: int,
    image_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    local_device_count: int | None = None,
    num_threads: int | None = None,
    in_memory_on: str = 'device',
    indices: np.ndarray | None = None,
) -> Iterator[dict[str, Any]]:
  """num_eval_batches centre crops {'image', 'label', 'mask'} of this host."""
  layout = _Layout(
      global_batch_size, process_index, process_count, local_device_count
  )
  split = source.resolve_split(split)
  n = source.num_examples(split) if indices is None else len(indices)
  num_batches = num_eval_batches(n, global_batch_size, layout.count)
  if not isinstance(source, sources.InMemorySource):
    args = (source, split, layout, image_size, num_threads, num_batches)
    return tf_stream.eval_iterator(*args)
  devices, put, gather, labels = _place(source, split, layout, in_memory_on)
  examples = np.arange(n) if indices is None else np.asarray(indices)
  shard, b = examples[layout.shard(n)], layout.host_batch
  fn = _compiled(_center_view, devices, in_memory_on == 'host', size=image_size)

  def batches():
    for i in range(num_batches):
      idx = shard[i * b : (i + 1) * b]
      mask = (np.arange(b) < len(idx)).reshape(layout.devices, -1)
      idx = np.pad(idx, (0, b - len(idx))).astype(np.int32).reshape(mask.shape)
      label = np.where(mask, labels[idx], 0).astype(np.int32)
      image = fn(gather(idx), put(idx), put(mask))
      yield {'image': image, 'label': put(label), 'mask': put(mask)}

  return batches()


def prefetch_to_device(
    iterator: Iterator[Any], size: int = 2, devices=None
) -> Iterator[Any]:
  """Puts [local_devices, ...] batches on the devices (the step's layout)."""
  sharding = parallel.device_sharding(devices)
  put = lambda x: x if isinstance(x, jax.Array) else jax.device_put(x, sharding)
  queue = collections.deque()
  for batch in iterator:
    queue.append(jax.tree.map(put, batch))
    if len(queue) >= size:
      yield queue.popleft()
  yield from queue


# ------------------------------------------------ in memory: crops on device
def resize_weights(start, length, size: int, in_size: int) -> jax.Array:
  """[B, size, in_size] bicubic weights of the spans [start, start + length)."""
  start = jnp.asarray(start, jnp.float32)[:, None]
  length = jnp.asarray(length, jnp.float32)[:, None]
  centre = start + (jnp.arange(size) + 0.5) * (length / size) - 0.5  # [B, S]
  floor = jnp.floor(centre)
  grid = jnp.arange(in_size, dtype=jnp.float32)
  weights = 0.0
  for k in (-1.0, 0.0, 1.0, 2.0):
    tap = floor + k
    inside = (tap >= start) & (tap <= start + length - 1)
    d = jnp.abs(centre - tap)  # Keys' cubic, a = -0.5 (TF's bicubic)
    keys = jnp.where(d < 2, ((-0.5 * d + 2.5) * d - 4) * d + 2, 0.0)
    keys = jnp.where(d <= 1, (1.5 * d - 2.5) * d * d + 1, keys)
    w = jnp.where(inside, keys, 0.0)
    weights = weights + w[..., None] * (tap[..., None] == grid)
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def crop_resize(
    images: jax.Array, box, size: int, flip: jax.Array | None = None
) -> jax.Array:
  """[B, size, size, 3] in [0, 1]: box (y0, x0, h, w) of each image, resized."""
  b, h, w = images.shape[:3]
  y0, x0, ch, cw = (jnp.broadcast_to(v, (b,)) for v in box)
  wy = resize_weights(y0, ch, size, h)
  wx = resize_weights(x0, cw, size, w)
  if flip is not None:
    wx = jnp.where(flip[:, None, None], wx[:, ::-1], wx)
  if images.dtype == jnp.uint8:
    wy = wy * (1.0 / 255.0)
  x = images.astype(jnp.float32)
  x = jnp.einsum('bsh,bhwc->bswc', wy, x, precision='highest')
  x = jnp.einsum('btw,bswc->bstc', wx, x, precision='highest')
  return jnp.clip(x, 0.0, 1.0)


def _random_views(x, pos, step, key, *, size, views, flip, min_area):
  """One device's crops: {'view1', ...} [b, size, size, 3] float32."""
  h, w = x.shape[1:3]
  step_key = jax.random.fold_in(key, step)
  draw = lambda p: jax.random.uniform(
      jax.random.fold_in(step_key, p), (views, crops.NUM_U + 1)
  )
  u = jax.vmap(draw)(pos)
  out = {}
  for v in range(views):
    box = crops.sample_crop(jnp, u[:, v, :-1], float(h), float(w), min_area)
    mirror = (u[:, v, -1] < 0.5) if flip else None  # u[..., NUM_U]
    out[f'view{v + 1}'] = crop_resize(x, box, size, mirror)
  return out


def _center_view(x, mask, *, size):
  """One device's centre crops, zero where mask is False."""
  box = crops.center_crop(np, float(x.shape[1]), float(x.shape[2]), size)
  return crop_resize(x, box, size) * mask[:, None, None, None]


@functools.lru_cache(maxsize=32)
def _compiled(fn, devices: tuple, gathered: bool, **static):
  """jit(shard_map(fn on one device's blocks)) over `devices`, cached."""
  spec = jax.sharding.PartitionSpec(parallel.AXIS_NAME)

  def per_device(images, idx, *args):  # each argument: [1, ...] blocks
    x = images[0] if gathered else images[0][idx[0]]
    out = fn(x, *(a[0] for a in args), **static)
    return jax.tree.map(lambda x: x[None], out)

  mesh = parallel.device_mesh(devices)
  return jax.jit(
      jax.shard_map(per_device, mesh=mesh, in_specs=spec, out_specs=spec)
  )


def _place(source, split, layout, on):
  """(devices, put, gather(idx) -> the images argument, labels), placed once."""
  devices = tuple(jax.local_devices()[: layout.devices])
  sharding = parallel.device_sharding(devices)
  put = lambda x: jax.device_put(x, sharding)
  placed = source.__dict__.setdefault('_placed', {})
  key = (split, tuple(d.id for d in devices), on)
  if key not in placed:
    images = host = np.asarray(source.images[split])
    where = f'on the host, cropped on {len(devices)} device(s)'
    if on == 'device':
      where = f'on each of {len(devices)} device(s) ({devices[0].platform})'
      images = jax.make_array_from_callback(
          (len(devices),) + host.shape, sharding, lambda _: host[None]
      )
    logging.info(
        f'In-memory data {source.name} split {split!r}: {len(host)} images '
        f'{"x".join(map(str, host.shape[1:]))} {host.dtype}, '
        f'{host.nbytes / 2**20:.1f} MiB {where}.'
    )
    placed[key] = images, np.asarray(source.labels[split], np.int32)
  images, labels = placed[key]
  gather = lambda idx: images if on == 'device' else put(images[idx])
  return devices, put, gather, labels
