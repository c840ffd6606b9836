"""Host input pipelines: per-host shard, shuffle, repeat, crop, batch, prefetch.

Every iterator yields dicts of numpy arrays shaped [local_devices,
per_device_batch, ...] for a pmapped step; `prefetch_to_device` puts them on
the local devices. The host does only decode + crop + resize; colour
augmentations run on device (`augment.py`).

Determinism and resumption. A host owns a fixed shard of the split's example
indices. Its stream is epoch 0's permutation of the shard, then epoch 1's, ...
and every random draw for an example (its crops, its flip) is a stateless
function of (seed, epoch, global example index, view). Batch k is stream
positions [k * host_batch, (k + 1) * host_batch), so `start_step=k` jumps to
epoch (k * host_batch) // shard_size and skips the rest on the index stream,
before anything is read or decoded.

Two implementations share this contract: tf.data for `folder:` and `tfds:`
sources (TensorFlow imported lazily), numpy for in-memory sources (`digits`,
`synthetic`), so GPU machines without TensorFlow can train on them. Both draw
crops with `_sample_crop`, the same code run on numpy or on TensorFlow ops
(`_TfOps`), and both resize with Keys' bicubic kernel, then clip to [0, 1].

TFDS detail: TFRecord files have no random access, so a host's stream is its
shard's files in a per-epoch stateless order, interleaved 16 at a time, then
shuffled in windows of `_window(host_batch)` records with a stateless
per-(epoch, window) permutation (TFDS files are already example-shuffled at
preparation). Resuming mid-epoch reads (not decodes) the records before the
position in that epoch.
"""
import collections
import concurrent.futures
import math
import os
from typing import Any, Iterator

import jax
import numpy as np

from byol_jax.data import sources as sources_lib

# Random-resized crop (paper Appendix B; torchvision's RandomResizedCrop):
# area fraction ~ U[0.08, 1], log aspect ratio ~ U[log 3/4, log 4/3], 10 tries
# then the whole image clamped to the ratio range. The official BYOL code uses
# tf.image.sample_distorted_bounding_box (uniform ratio, min_object_covered
# 0.1, centre-crop fallback); we follow the log-uniform convention.
AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3. / 4., 4. / 3.)
CROP_ATTEMPTS = 10
# Eval: centre crop of 224/256 of the shorter side, then resize (official
# byol/utils/dataset.py). Images whose shorter side is already <= image_size
# (32px CIFAR, 8px digits) are not cropped: the central square is resized.
CENTER_CROP_FRACTION = 224. / 256.
_NUM_U = 2 * CROP_ATTEMPTS + 2  # uniforms per crop
_SALT_PERM, _SALT_CROP, _SALT_FILES, _SALT_WINDOW = 1, 2, 3, 4


def _sample_crop(xp, u, height, width):
  """Random-resized-crop box from uniforms; xp is numpy or `_TfOps`.

  Args:
    xp: `numpy` or a `_TfOps` (the same few numpy functions in TensorFlow).
    u: [..., _NUM_U] float64 uniforms in [0, 1).
    height: image height(s), broadcastable to u[..., 0].
    width: image width(s).

  Returns:
    (y0, x0, crop_height, crop_width) int64 arrays of shape u.shape[:-1].
  """
  h = xp.asarray(height, xp.float64)[..., None]
  w = xp.asarray(width, xp.float64)[..., None]
  a = CROP_ATTEMPTS
  area = h * w * (AREA_RANGE[0] + (AREA_RANGE[1] - AREA_RANGE[0]) * u[..., :a])
  lo, hi = math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])
  ratio = xp.exp(lo + (hi - lo) * u[..., a:2 * a])
  cw, ch = xp.round(xp.sqrt(area * ratio)), xp.round(xp.sqrt(area / ratio))
  ok = (cw >= 1) & (ch >= 1) & (cw <= w) & (ch <= h)
  tries = xp.arange(a, dtype=xp.float64)
  first = xp.min(xp.where(ok, tries, float(a)), axis=-1)  # first success
  pick = tries == first[..., None]
  cw = xp.sum(xp.where(pick, cw, 0.), -1)
  ch = xp.sum(xp.where(pick, ch, 0.), -1)
  h, w = h[..., 0], w[..., 0]
  # Fallback: the whole image cut to the nearest allowed aspect ratio (at a
  # random position; torchvision centres it).
  fb_w = xp.minimum(w, xp.round(h * ASPECT_RANGE[1]))
  fb_h = xp.minimum(h, xp.round(w / ASPECT_RANGE[0]))
  cw, ch = xp.where(first < a, cw, fb_w), xp.where(first < a, ch, fb_h)
  y0 = xp.floor(u[..., 2 * a] * (h - ch + 1))
  x0 = xp.floor(u[..., 2 * a + 1] * (w - cw + 1))
  return tuple(xp.asarray(v, xp.int64) for v in (y0, x0, ch, cw))


class _TfOps:
  """The numpy functions `_sample_crop` / `_center_crop` use, in TensorFlow."""

  def __init__(self, tf):
    self.float64, self.int64 = tf.float64, tf.int64
    self.asarray = lambda x, dtype: tf.cast(x, dtype)
    self.arange = lambda n, dtype: tf.range(n, dtype=dtype)
    self.min = lambda x, axis: tf.reduce_min(x, axis)
    self.sum = lambda x, axis: tf.reduce_sum(x, axis)
    self.exp, self.sqrt, self.floor = tf.exp, tf.sqrt, tf.floor
    self.round = tf.round  # half to even, as np.round
    self.minimum, self.where = tf.minimum, tf.where


def _center_crop(xp, height, width, image_size):
  """Centre-crop box (y0, x0, side, side); see CENTER_CROP_FRACTION."""
  side = xp.minimum(height, width)
  fraction = xp.asarray(side, xp.float64) * CENTER_CROP_FRACTION
  crop = xp.where(side > image_size, xp.asarray(fraction, xp.int64),
                  xp.asarray(side, xp.int64))
  return ((height - crop + 1) // 2, (width - crop + 1) // 2, crop, crop)


class _Layout:
  """Per-host batch geometry, validated."""

  def __init__(self, global_batch_size, process_index, process_count,
               local_device_count):
    self.index = jax.process_index() if process_index is None else process_index
    self.count = jax.process_count() if process_count is None else process_count
    self.devices = (jax.local_device_count() if local_device_count is None
                    else local_device_count)
    total = self.count * self.devices
    if global_batch_size <= 0 or global_batch_size % total:
      raise ValueError(
          f'global_batch_size={global_batch_size} must be a positive multiple '
          f'of process_count * local_device_count = {self.count} * '
          f'{self.devices} = {total}; set global_batch_size to e.g. '
          f'{max(1, round(global_batch_size / total)) * total}')
    if not 0 <= self.index < self.count:
      raise ValueError(f'process_index={self.index} must be in [0, '
                       f'{self.count}) (process_count={self.count})')
    self.host_batch = global_batch_size // self.count
    self.per_device = self.host_batch // self.devices

  def shard(self, n):
    """This host's example indices of n: strided, so classes stay balanced."""
    return np.arange(self.index, n, self.count)


def num_eval_batches(num_examples: int, global_batch_size: int,
                     process_count: int | None = None) -> int:
  """Batches every host yields in `make_eval_iterator` (same on all hosts)."""
  count = jax.process_count() if process_count is None else process_count
  host_batch = global_batch_size // count
  return _ceil_div(_ceil_div(num_examples, count), host_batch)


def _ceil_div(a, b):
  return -(-a // b)


def _check_args(split, image_size, seed=0, start_step=0):
  if not isinstance(image_size, int) or image_size <= 0:
    raise ValueError(f'image_size={image_size!r} must be a positive int')
  if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**62:
    raise ValueError(f'seed={seed!r} must be an int in [0, 2**62)')
  if not isinstance(start_step, (int, np.integer)) or start_step < 0:
    raise ValueError(f'start_step={start_step!r} must be an int >= 0')
  if not isinstance(split, str):
    raise ValueError(f'split={split!r} must be a split name string')


def make_pretrain_iterator(
    source: sources_lib.Source, *, split: str, global_batch_size: int,
    image_size: int, seed: int, start_step: int = 0,
    process_index: int | None = None, process_count: int | None = None,
    local_device_count: int | None = None,
    num_threads: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Infinite, shuffled, resumable stream of BYOL's two crops per image.

  Args:
    source: from `sources.get_source`.
    split: a split of the source or a logical one ('pretrain').
    global_batch_size: images per step over all hosts; must be a multiple of
      process_count * local_device_count.
    image_size: output side (224 for ImageNet, 32 for CIFAR).
    seed: data seed; a host's stream is a function of (seed, process_index,
      process_count, global_batch_size).
    start_step: first batch to yield; the batches before it are skipped on
      the index stream, without decoding.
    process_index: this host (default jax.process_index()).
    process_count: hosts (default jax.process_count()).
    local_device_count: devices of this host (default jax.local_device_count()).
    num_threads: tf.data private thread pool size (default: all cores).

  Returns:
    Iterator of {'view1', 'view2': float32 [local_devices, per_device,
    image_size, image_size, 3] in [0, 1]; 'label': int32 [local_devices,
    per_device]}.
  """
  _check_args(split, image_size, seed, start_step)
  layout = _Layout(global_batch_size, process_index, process_count,
                   local_device_count)
  return _random_iterator(source, split, layout, seed, start_step, image_size,
                          views=2, flip=False, num_threads=num_threads)


def make_supervised_iterator(
    source: sources_lib.Source, *, split: str, global_batch_size: int,
    image_size: int, seed: int, start_step: int = 0,
    process_index: int | None = None, process_count: int | None = None,
    local_device_count: int | None = None,
    num_threads: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Infinite stream for linear-probe training: random-resized crop + flip.

  Same arguments and guarantees as `make_pretrain_iterator`.

  Returns:
    Iterator of {'image': float32 [local_devices, per_device, image_size,
    image_size, 3] in [0, 1], 'label': int32 [local_devices, per_device]}.
    Normalise on device with `augment.normalize`.
  """
  _check_args(split, image_size, seed, start_step)
  layout = _Layout(global_batch_size, process_index, process_count,
                   local_device_count)
  it = _random_iterator(source, split, layout, seed, start_step, image_size,
                        views=1, flip=True, num_threads=num_threads)
  return ({'image': b['view1'], 'label': b['label']} for b in it)


def make_eval_iterator(
    source: sources_lib.Source, *, split: str, global_batch_size: int,
    image_size: int, process_index: int | None = None,
    process_count: int | None = None, local_device_count: int | None = None,
    num_threads: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over this host's shard in order, centre-cropped, padded.

  Every host yields `num_eval_batches(source.num_examples(split), ...)`
  batches, so pmapped eval steps stay in lock-step across hosts; padding
  examples have mask False, label 0 and a zero image.

  Args:
    source: from `sources.get_source`.
    split: a split of the source or a logical one ('test', 'linear_valid').
    global_batch_size: images per step over all hosts.
    image_size: output side; see CENTER_CROP_FRACTION for the crop.
    process_index: this host (default jax.process_index()).
    process_count: hosts (default jax.process_count()).
    local_device_count: devices of this host (default jax.local_device_count()).
    num_threads: tf.data private thread pool size (default: all cores).

  Returns:
    Iterator of {'image': float32 [local_devices, per_device, image_size,
    image_size, 3] in [0, 1], 'label': int32 [...], 'mask': bool [...]}.
  """
  _check_args(split, image_size)
  layout = _Layout(global_batch_size, process_index, process_count,
                   local_device_count)
  raw = source.resolve_split(split)
  if isinstance(source, sources_lib.InMemorySource):
    return _np_eval(source, raw, layout, image_size)
  return _tf_eval(source, raw, layout, image_size, num_threads)


def prefetch_to_device(iterator: Iterator[Any], size: int = 2,
                       devices=None) -> Iterator[Any]:
  """Moves [local_devices, ...] batches to the devices, `size` ahead.

  Each leaf becomes a jax.Array sharded along axis 0 over `devices` (default
  jax.local_devices()) with NamedSharding(Mesh(devices), P(axis)). That is
  the layout jax.pmap (implemented over jit + shard_map since jax 0.8) uses for
  its inputs, so a pmapped step consumes it without a copy; the deprecated
  jax.device_put_sharded is gone in jax 0.10. device_put is asynchronous, so
  the transfer of the next `size` batches overlaps the current step.

  Args:
    iterator: yields pytrees of numpy arrays with leading axis len(devices).
    size: number of batches in flight.
    devices: target devices.

  Yields:
    The same pytrees as device arrays.
  """
  devices = list(devices or jax.local_devices())
  mesh = jax.sharding.Mesh(np.asarray(devices), ('devices',))
  sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('devices'))
  queue = collections.deque()
  iterator = iter(iterator)

  def enqueue(n):
    for _ in range(n):
      try:
        batch = next(iterator)
      except StopIteration:
        return
      queue.append(jax.tree.map(lambda x: jax.device_put(x, sharding), batch))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)


def _random_iterator(source, split, layout, seed, start_step, image_size,
                     views, flip, num_threads):
  raw = source.resolve_split(split)
  if isinstance(source, sources_lib.InMemorySource):
    return _np_random(source, raw, layout, seed, start_step, image_size,
                      views, flip)
  return _tf_random(source, raw, layout, seed, start_step, image_size, views,
                    flip, num_threads)


def _split_devices(batch, layout):
  return {k: v.reshape((layout.devices, layout.per_device) + v.shape[1:])
          for k, v in batch.items()}


# ------------------------------------------------------- numpy (in memory)
def _keys_cubic(x):
  """Keys' cubic convolution kernel, a = -0.5 (TF's bicubic)."""
  x = np.abs(x)
  return np.where(x <= 1, (1.5 * x - 2.5) * x * x + 1,
                  np.where(x < 2, ((-0.5 * x + 2.5) * x - 4) * x + 2, 0.))


def _taps(start, length, out):
  """Bicubic taps resampling [start, start + length) to `out` samples.

  Half-pixel centres and edge clamping within the crop, as TF's resize.

  Returns:
    ([B, out, 4] int source indices, [B, out, 4] float32 weights).
  """
  c = start[:, None] + (np.arange(out) + 0.5) * (length / out)[:, None] - 0.5
  f = np.floor(c)[..., None]
  k = np.arange(-1, 3)
  last = (start + length - 1)[:, None, None]
  idx = np.clip(f + k, start[:, None, None], last)
  return idx.astype(np.intp), _keys_cubic(c[..., None] - f - k).astype(
      np.float32)


def _resample_rows(x, idx, weights):
  """out[b, s] = sum_k weights[b, s, k] * x[b, idx[b, s, k]] (contiguous)."""
  b = np.arange(len(x))[:, None]
  out = np.multiply(weights[:, :, 0, None, None], x[b, idx[:, :, 0]],
                    dtype=np.float32)
  tmp = np.empty_like(out)
  for k in range(1, 4):
    out += np.multiply(weights[:, :, k, None, None], x[b, idx[:, :, k]],
                       out=tmp)
  return out


_POOL = None


def numpy_threads() -> int:
  """Threads of the in-memory (numpy) path: the cores, at most 16."""
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
           else os.cpu_count() or 1)
  return min(16, cores)


def _pool():
  global _POOL  # pylint: disable=global-statement
  if _POOL is None:  # numpy releases the GIL in gathers and arithmetic
    _POOL = concurrent.futures.ThreadPoolExecutor(
        numpy_threads(), thread_name_prefix='np_crop')
  return _POOL


def _np_crop_resize(images, box, size, flip=None):
  """Crops box (y0, x0, h, w) of each image, bicubic-resizes to size^2.

  Separable 4-tap gathers (rows, then columns) on chunks of about 1 MB
  spread over a thread pool; a flip reverses the column taps. uint8 images
  are scaled to [0, 1].

  Returns:
    [B, size, size, 3] float32 in [0, 1].
  """
  n, h, w = images.shape[:3]
  y0, x0, ch, cw = (np.broadcast_to(np.asarray(v, np.int64), (n,))
                    for v in box)
  iy, wy = _taps(y0, ch, size)
  ix, wx = _taps(x0, cw, size)
  if flip is not None:
    ix = np.where(flip[:, None, None], ix[:, ::-1], ix)
    wx = np.where(flip[:, None, None], wx[:, ::-1], wx)
  if images.dtype == np.uint8:  # fold the 1/255 into the row weights
    wy = wy * np.float32(1. / 255.)
  out = np.empty((n, size, size, 3), np.float32)

  def work(j):
    rows = _resample_rows(images[j], iy[j], wy[j])  # [m, size, w, 3]
    rows = np.ascontiguousarray(rows.transpose(0, 2, 1, 3))
    cols = _resample_rows(rows, ix[j], wx[j])  # [m, size(x), size(y), 3]
    np.clip(cols.transpose(0, 2, 1, 3), 0., 1., out=out[j])

  chunk = max(1, 2**18 // (size * max(w, size) * 3))
  list(_pool().map(work, [slice(i, i + chunk) for i in range(0, n, chunk)]))
  return out


def _np_random(source, split, layout, seed, start_step, image_size, views,
               flip):
  """Infinite numpy iterator over an in-memory split; see module docstring."""
  images, labels = source.images[split], source.labels[split]
  n, h, w = images.shape[:3]
  shard = layout.shard(n)
  cache = {}

  def epoch(e):  # (permutation of the shard, uniforms per global index)
    if e not in cache:
      if len(cache) > 1:
        cache.pop(min(cache))
      perm = np.random.default_rng([seed, _SALT_PERM, e]).permutation(shard)
      u = np.random.default_rng([seed, _SALT_CROP, e]).random(
          (n, views, _NUM_U + 1))
      cache[e] = perm, u
    return cache[e]

  step = start_step
  while True:
    pos = step * layout.host_batch + np.arange(layout.host_batch)
    idx = np.empty_like(pos)
    u = np.empty((layout.host_batch, views, _NUM_U + 1))
    for e in np.unique(pos // len(shard)):
      sel = pos // len(shard) == e
      perm, ue = epoch(int(e))
      idx[sel] = perm[pos[sel] % len(shard)]
      u[sel] = ue[idx[sel]]
    x = images[idx]
    out = {}
    for v in range(views):
      box = _sample_crop(np, u[:, v, :_NUM_U], h, w)
      out[f'view{v + 1}'] = _np_crop_resize(
          x, box, image_size, (u[:, v, _NUM_U] < 0.5) if flip else None)
    out['label'] = labels[idx].astype(np.int32)
    yield _split_devices(out, layout)
    step += 1


def _np_eval(source, split, layout, image_size):
  images, labels = source.images[split], source.labels[split]
  n, h, w = images.shape[:3]
  shard = layout.shard(n)
  box = _center_crop(np, h, w, image_size)
  for b in range(num_eval_batches(n, layout.host_batch * layout.count,
                                  layout.count)):
    idx = shard[b * layout.host_batch:(b + 1) * layout.host_batch]
    mask = np.arange(layout.host_batch) < len(idx)
    idx = np.concatenate([idx, np.zeros(layout.host_batch - len(idx), int)])
    image = _np_crop_resize(images[idx], box, image_size)
    yield _split_devices({'image': image * mask[:, None, None, None],
                          'label': np.where(mask, labels[idx], 0).astype(
                              np.int32), 'mask': mask}, layout)


# -------------------------------------------------- tf.data (folder, tfds)
def _import_tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:  # the input pipeline must never take accelerator memory
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # already initialised
    pass
  return tf


def _fold(tf, seed, *data):
  for d in data:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
  return seed


def _window(host_batch):
  """Shuffle-window size in records: ~10 batches (official: 10 * batch)."""
  return int(np.clip(10 * host_batch, 1024, 10_000))


def _tf_decode_crop(tf, image_bytes, box_fn):
  """Decodes the crop box_fn(height, width); for JPEG only the crop."""
  def jpeg():
    shape = tf.io.extract_jpeg_shape(image_bytes, output_type=tf.int64)
    window = tf.cast(tf.stack(box_fn(shape[0], shape[1])), tf.int32)
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def other():  # PNG etc.: decode all, then crop
    image = tf.io.decode_image(image_bytes, channels=3,
                               expand_animations=False)
    shape = tf.shape(image, out_type=tf.int64)
    y0, x0, ch, cw = box_fn(shape[0], shape[1])
    return image[y0:y0 + ch, x0:x0 + cw]

  return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)


def _tf_resize(tf, image, size):
  # Bicubic then clip, as the official byol/utils/dataset.py.
  image = tf.image.resize(image, [size, size], method='bicubic')
  return tf.ensure_shape(tf.clip_by_value(image / 255., 0., 1.),
                         [size, size, 3])


def _tf_folder_stream(tf, source, split, layout, seed, start_pos, shuffle):
  """(epoch, global index, payload) elements and payload -> (bytes, label)."""
  paths = tf.constant(source.files[split])
  labels = tf.constant(source.labels[split])
  shard = layout.shard(len(source.files[split]))
  load = lambda i: (tf.io.read_file(paths[i]), labels[i])
  if not shuffle:
    ds = tf.data.Dataset.from_tensor_slices(shard)
    return ds.map(lambda i: (tf.constant(0, tf.int64), i, i)), load, len(shard)
  e0, offset = divmod(start_pos, len(shard))
  shard_t = tf.constant(shard, tf.int64)

  def epoch(e):
    perm = tf.random.experimental.stateless_shuffle(
        shard_t, seed=_fold(tf, seed, _SALT_PERM, e))
    return tf.data.Dataset.from_tensor_slices(perm).map(lambda i: (e, i, i))

  ds = tf.data.Dataset.range(e0, 2**62).flat_map(epoch).skip(offset)
  return ds, load, len(shard)


def _tfds_host_split(tf, source, split, layout):
  """This host's contiguous slice of `split`: (split string, start, size)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  del tf
  if source.mocked:  # mock_data ignores slicing; every host sees all
    return split, 0, source.num_examples(split)
  splits = source.builder.info.splits
  parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(splits)
  if len(parts) != 1:
    raise ValueError(f'split {split!r} of {source.name}: use one split (with '
                     "an optional slice such as 'train[10000:]'), not a sum")
  name = parts[0].splitname
  lo = parts[0].from_ or 0
  hi = splits[name].num_examples if parts[0].to is None else parts[0].to
  n = hi - lo
  start = lo + layout.index * n // layout.count
  end = lo + (layout.index + 1) * n // layout.count
  return f'{name}[{start}:{end}]', start, end - start


def _window_shuffle(tf, ds, window, seed):
  """Stateless shuffle of each consecutive window of `window` elements."""
  def shuffle(w, batch):
    n = tf.shape(tf.nest.flatten(batch)[0], out_type=tf.int64)[0]
    perm = tf.random.experimental.stateless_shuffle(
        tf.range(n), seed=_fold(tf, seed, w))
    return tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda t: tf.gather(t, perm), batch))
  return ds.batch(window).enumerate().flat_map(shuffle)


def _tf_tfds_stream(tf, source, split, layout, seed, start_pos, shuffle):
  """Like _tf_folder_stream for a TFDS split (see module docstring)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder, ik, lk = source.builder, source.image_key, source.label_key
  decoders = {ik: tfds.decode.SkipDecoding()}
  host_split, start, n = _tfds_host_split(tf, source, split, layout)
  if n == 0:
    raise ValueError(f'{source.name} split {split!r} has no examples for '
                     f'process {layout.index} of {layout.count}')

  def records():  # (global index, (bytes, label)) in file order
    ds = builder.as_dataset(split=host_split, shuffle_files=False,
                            decoders=decoders)
    ds = ds.map(lambda ex: (ex[ik], ex[lk])).enumerate()
    return ds.map(lambda j, p: (start + j, p))

  identity = lambda p: p
  if not shuffle:
    return (records().map(lambda i, p: (tf.constant(0, tf.int64), i, p)),
            identity, n)
  window = _window(layout.host_batch)
  file_format = getattr(builder.info, 'file_format', None)
  if source.mocked or 'tfrecord' not in str(file_format).lower():
    base = records()  # no file-level shuffle; window shuffle only
    epoch = lambda e: _window_shuffle(
        tf, base, window, _fold(tf, seed, _SALT_WINDOW, e)).map(
            lambda i, p: (e, i, p))
    load = identity
  else:
    fis = builder.info.splits[host_split].file_instructions
    names = tf.constant([str(fi.filename) for fi in fis])
    skips = tf.constant([fi.skip for fi in fis], tf.int64)
    takes = tf.constant([fi.take for fi in fis], tf.int64)
    starts = tf.constant(start + np.cumsum([0] + [fi.take for fi in fis])[:-1],
                         tf.int64)

    def read(f):
      ds = tf.data.TFRecordDataset(names[f]).skip(skips[f]).take(takes[f])
      return ds.enumerate().map(lambda j, rec: (starts[f] + j, rec))

    def epoch(e):
      order = tf.random.experimental.stateless_shuffle(
          tf.range(len(fis), dtype=tf.int64),
          seed=_fold(tf, seed, _SALT_FILES, e))
      recs = tf.data.Dataset.from_tensor_slices(order).interleave(
          read, cycle_length=min(16, len(fis)), block_length=1,
          num_parallel_calls=min(16, len(fis)), deterministic=True)
      return _window_shuffle(tf, recs, window,
                             _fold(tf, seed, _SALT_WINDOW, e)).map(
                                 lambda i, rec: (e, i, rec))

    def load(rec):
      ex = builder.info.features.deserialize_example(rec, decoders=decoders)
      return ex[ik], ex[lk]

  e0, offset = divmod(start_pos, n)
  ds = tf.data.Dataset.range(e0, 2**62).flat_map(epoch).skip(offset)
  return ds, load, n


def _tf_stream(tf, source, split, layout, seed, start_pos, shuffle):
  if isinstance(source, sources_lib.FolderSource):
    return _tf_folder_stream(tf, source, split, layout, seed, start_pos,
                             shuffle)
  if isinstance(source, sources_lib.TfdsSource):
    return _tf_tfds_stream(tf, source, split, layout, seed, start_pos, shuffle)
  raise ValueError(f'source {source!r} is not a folder, TFDS or in-memory one')


def _tf_finish(tf, ds, layout, num_threads):
  """Batch to [devices, per_device, ...], prefetch, numpy iterator."""
  ds = ds.batch(layout.host_batch, drop_remainder=True)
  ds = ds.map(lambda b: {k: tf.reshape(v, tf.concat(
      [[layout.devices, layout.per_device], tf.shape(v)[1:]], 0))
                         for k, v in b.items()})
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  if num_threads:
    options.threading.private_threadpool_size = num_threads
    options.threading.max_intra_op_parallelism = 1
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(options)
  yield from ds.as_numpy_iterator()


def _tf_random(source, split, layout, seed, start_step, image_size, views,
               flip, num_threads):
  tf = _import_tf()
  tnp = _TfOps(tf)
  seed_t = tf.constant([seed, 0], tf.int64)
  ds, load, _ = _tf_stream(tf, source, split, layout, seed_t,
                           start_step * layout.host_batch, shuffle=True)

  def crops(e, i, payload):
    image_bytes, label = load(payload)
    example_seed = _fold(tf, seed_t, _SALT_CROP, e, i)
    out = {}
    for v in range(views):
      u = tf.random.stateless_uniform([_NUM_U + 1], _fold(tf, example_seed, v),
                                      dtype=tf.float64)
      box = lambda h, w, u=u: _sample_crop(tnp, u[:_NUM_U], h, w)
      image = _tf_resize(tf, _tf_decode_crop(tf, image_bytes, box), image_size)
      if flip:
        image = tf.where(u[_NUM_U] < 0.5, tf.reverse(image, [1]), image)
      out[f'view{v + 1}'] = image
    out['label'] = tf.cast(label, tf.int32)
    return out

  ds = ds.map(crops, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # Files the source's validation missed: dropped (TF logs each), not fatal.
  ds = ds.ignore_errors(log_warning=True)
  return _tf_finish(tf, ds, layout, num_threads)


def _tf_eval(source, split, layout, image_size, num_threads):
  tf = _import_tf()
  tnp = _TfOps(tf)
  ds, load, _ = _tf_stream(tf, source, split, layout, None, 0, shuffle=False)
  box = lambda h, w: _center_crop(tnp, h, w, image_size)

  def center(e, i, payload):
    del e, i
    image_bytes, label = load(payload)
    image = _tf_resize(tf, _tf_decode_crop(tf, image_bytes, box), image_size)
    return {'image': image, 'label': tf.cast(label, tf.int32),
            'mask': tf.constant(True)}

  ds = ds.map(center, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors(log_warning=True)
  pad = tf.data.Dataset.from_tensors({
      'image': tf.zeros([image_size, image_size, 3]),
      'label': tf.constant(0, tf.int32), 'mask': tf.constant(False)}).repeat()
  total = num_eval_batches(source.num_examples(split),
                           layout.host_batch * layout.count, layout.count)
  ds = ds.concatenate(pad).take(total * layout.host_batch)
  return _tf_finish(tf, ds, layout, num_threads)
