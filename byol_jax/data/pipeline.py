"""Input pipelines: per-host batches of crops, for a pmapped step.

Every iterator yields dicts of arrays shaped [local_devices,
per_device_batch, ...]; colour augmentations run later, on device
(`augment.py`). Two paths, chosen by the source:

  * in memory (`InMemorySource`: digits, synthetic, image folders that fit;
    `in_memory.py`): the uint8 arrays sit on the devices, and each step
    gathers its examples and crops, resizes and flips them ON the devices.
    The batches are jax.Arrays already sharded over the local devices. No
    TensorFlow, no host work beyond an index per example.
  * streaming (`FolderSource`, `TfdsSource`; `tf_stream.py`): tf.data on
    each host reads its own shard, decodes and crops; numpy batches, which
    `prefetch_to_device` moves to the devices.

Both draw crop boxes with `crops.sample_crop` (the official BYOL sampler)
and resize with Keys' bicubic kernel, then clip to [0, 1].

Determinism and resumption. Every random draw for an example (its crops,
its flip) is a stateless function of the seed and the example's place in
the stream, and batch k is stream positions [k * batch, (k + 1) * batch), so
`start_step=k` starts there without reading or decoding what it skips. In
memory the stream is global (each epoch a permutation of the whole split;
host h takes its part of each global batch), so batches do not depend on
the number of devices or hosts; streaming, a host owns a fixed shard of
the split and its stream is epoch 0's permutation of the shard, then epoch
1's, ... (details in in_memory.py and tf_stream.py). This module holds the
public API, the argument and batch-layout checks, and the dispatch.
"""
import collections
from typing import Any, Iterator

import jax
import numpy as np

from byol_jax import parallel
from byol_jax.data import crops
from byol_jax.data import in_memory
from byol_jax.data import sources as sources_lib
from byol_jax.data import tf_stream

# Re-exported: the crop constants are part of this module's public API.
AREA_RANGE = crops.AREA_RANGE
ASPECT_RANGE = crops.ASPECT_RANGE
CENTER_CROP_FRACTION = crops.CENTER_CROP_FRACTION


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

  def num_eval_batches(self, num_examples):
    """`num_eval_batches` for this layout (used by the eval streams)."""
    return num_eval_batches(num_examples, self.host_batch * self.count,
                            self.count)


def num_eval_batches(num_examples: int, global_batch_size: int,
                     process_count: int | None = None) -> int:
  """Batches every host yields in `make_eval_iterator` (same on all hosts).

  Args:
    num_examples: examples of the split (all hosts together).
    global_batch_size: images per step over all hosts.
    process_count: hosts (default jax.process_count()).

  Returns:
    The number of batches, each host's shard padded to a whole batch.
  """
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
    num_threads: int | None = None,
    min_crop_area: float = AREA_RANGE[0],
    in_memory_on: str = 'device') -> Iterator[dict[str, np.ndarray]]:
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
    min_crop_area: smallest crop area, as a fraction of the image (BYOL's
      0.08; tiny images such as the 8x8 digits need larger crops).
    in_memory_on: in-memory sources: where the images live, 'device' (a copy
      on each local device) or 'host' (gathered there); the same batches.

  Returns:
    Iterator of {'view1', 'view2': float32 [local_devices, per_device,
    image_size, image_size, 3] in [0, 1]; 'label': int32 [local_devices,
    per_device]}: numpy arrays when streaming, jax.Arrays sharded over the
    first `local_device_count` local devices when in memory.
  """
  _check_args(split, image_size, seed, start_step)
  layout = _Layout(global_batch_size, process_index, process_count,
                   local_device_count)
  return _random_iterator(source, split, layout, seed, start_step, image_size,
                          views=2, flip=False, num_threads=num_threads,
                          min_area=min_crop_area, on=in_memory_on)


def make_supervised_iterator(
    source: sources_lib.Source, *, split: str, global_batch_size: int,
    image_size: int, seed: int, start_step: int = 0,
    process_index: int | None = None, process_count: int | None = None,
    local_device_count: int | None = None,
    num_threads: int | None = None,
    min_crop_area: float = AREA_RANGE[0],
    in_memory_on: str = 'device') -> Iterator[dict[str, np.ndarray]]:
  """Infinite stream for linear-probe training: random-resized crop + flip.

  Same guarantees as `make_pretrain_iterator`.

  Args:
    source: from `sources.get_source`.
    split: a split of the source or a logical one ('linear_train').
    global_batch_size: images per step over all hosts; must be a multiple of
      process_count * local_device_count.
    image_size: output side.
    seed: data seed (the crops and flips are functions of it).
    start_step: first batch to yield.
    process_index: this host (default jax.process_index()).
    process_count: hosts (default jax.process_count()).
    local_device_count: devices of this host (default jax.local_device_count()).
    num_threads: tf.data private thread pool size (default: all cores).
    min_crop_area: smallest crop area, as a fraction of the image.
    in_memory_on: see make_pretrain_iterator.

  Returns:
    Iterator of {'image': float32 [local_devices, per_device, image_size,
    image_size, 3] in [0, 1], 'label': int32 [local_devices, per_device]}.
    Normalise on device with `augment.normalize`.
  """
  _check_args(split, image_size, seed, start_step)
  layout = _Layout(global_batch_size, process_index, process_count,
                   local_device_count)
  it = _random_iterator(source, split, layout, seed, start_step, image_size,
                        views=1, flip=True, num_threads=num_threads,
                        min_area=min_crop_area, on=in_memory_on)
  return ({'image': b['view1'], 'label': b['label']} for b in it)


def make_eval_iterator(
    source: sources_lib.Source, *, split: str, global_batch_size: int,
    image_size: int, process_index: int | None = None,
    process_count: int | None = None, local_device_count: int | None = None,
    num_threads: int | None = None, in_memory_on: str = 'device',
    indices: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
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
    in_memory_on: see make_pretrain_iterator.
    indices: in-memory sources only: read just these examples of the split
      (e.g. the kNN monitor's fixed subset), as if they were the split;
      None: all of it.

  Returns:
    Iterator of {'image': float32 [local_devices, per_device, image_size,
    image_size, 3] in [0, 1], 'label': int32 [...], 'mask': bool [...]}
    (jax.Arrays on the devices for in-memory sources).

  Raises:
    ValueError: a bad argument or batch layout, or `indices` for a source
      that streams.
  """
  _check_args(split, image_size)
  layout = _Layout(global_batch_size, process_index, process_count,
                   local_device_count)
  raw = source.resolve_split(split)
  if isinstance(source, sources_lib.InMemorySource):
    return in_memory.eval_iterator(source, raw, layout, image_size,
                                   in_memory_on, indices)
  if indices is not None:
    raise ValueError(f'indices: only in-memory sources read a subset; '
                     f'{source.name} streams')
  return tf_stream.eval_iterator(source, raw, layout, image_size, num_threads)


def prefetch_to_device(iterator: Iterator[Any], size: int = 2,
                       devices=None) -> Iterator[Any]:
  """Moves [local_devices, ...] batches to the devices, `size` ahead.

  Each leaf becomes a jax.Array laid out by `parallel.device_sharding`
  (row d on device d), the layout a device program (the pmapped step)
  consumes without a copy. device_put is asynchronous, so the transfer of
  the next `size` batches overlaps the current step.

  Args:
    iterator: yields pytrees of numpy arrays with leading axis len(devices)
      (jax.Arrays, e.g. the in-memory path's, pass through unchanged).
    size: number of batches in flight.
    devices: target devices (default: jax.local_devices()).

  Yields:
    The same pytrees as device arrays.
  """
  sharding = parallel.device_sharding(devices)
  queue = collections.deque()
  iterator = iter(iterator)

  def enqueue(n):
    for _ in range(n):
      try:
        batch = next(iterator)
      except StopIteration:
        return
      queue.append(jax.tree.map(
          lambda x: x if isinstance(x, jax.Array) else jax.device_put(
              x, sharding), batch))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)


def _random_iterator(source, split, layout, seed, start_step, image_size,
                     views, flip, num_threads, min_area, on):
  raw = source.resolve_split(split)
  if isinstance(source, sources_lib.InMemorySource):
    return in_memory.random_iterator(source, raw, layout, seed, start_step,
                                     image_size, views, flip, min_area, on)
  return tf_stream.random_iterator(source, raw, layout, seed, start_step,
                                   image_size, views, flip, num_threads,
                                   min_area)
