"""Datasets held in memory, cropped on the devices: no TensorFlow, no host work.

An `InMemorySource` (digits, synthetic, image folders decoded once by
`image_cache.py`) is copied once onto every local device (`place`; or kept
on the host with `on='host'`). Each step then runs, per device:

    gather this device's examples -> random-resized crop (the official BYOL
    sampler, crops.sample_crop) -> bicubic resize to image_size -> [flip]

and the training step applies BYOL's colour augmentations on device
(augment.py) as for the streaming path. The host only computes which
examples a step reads (an int32 index per example) and dispatches.

Randomness. Step k's global batch is positions [k B, (k + 1) B) of a stream
that is epoch 0's permutation of the split, then epoch 1's, ... (permutation
of epoch e: numpy's default_rng([seed, crops.SALT_PERM, e])). The crop and
flip of the example at position p of step k's global batch use the key
fold_in(fold_in(fold_in(key(seed), crops.SALT_CROP), k), p). Every random
choice is thus a function of (seed, step, global example position): the
same for any number of devices or hosts (host h's devices take positions
[h B / hosts, (h + 1) B / hosts) of the global batch, in pmap's device
order), and a run resumed at step k draws what an uninterrupted one does.

Resize. Keys' cubic convolution (a = -0.5) with half-pixel centres, taps
outside the crop box dropped and the remaining weights renormalised, no
antialiasing: the method of TF's `tf.image.resize(method='bicubic')` of the
cropped image, which the streaming path runs (as the official
byol/utils/dataset.py). The two agree to float32 rounding (measured 3e-7 of
the pixel range with tensorflow-cpu 2.21; tests/data/test_in_memory.py
holds them within 1e-5). Written as two small matrix products per image,
[S, H] x [H, W, 3] x [W, S] at HIGHEST precision: dense, so accelerators run
it as matmuls rather than gathers. Then clip to [0, 1].
"""
import dataclasses
import functools

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import parallel
from byol_jax.data import crops

ON = ('device', 'host')
_HIGHEST = jax.lax.Precision.HIGHEST


# ------------------------------------------------------------ crop + resize
def _keys_cubic(x):
  """Keys' cubic convolution kernel, a = -0.5 (TF's bicubic)."""
  x = jnp.abs(x)
  return jnp.where(x <= 1, (1.5 * x - 2.5) * x * x + 1,
                   jnp.where(x < 2, ((-0.5 * x + 2.5) * x - 4) * x + 2, 0.))


def resize_weights(start, length, size: int, in_size: int) -> jax.Array:
  """Bicubic resampling matrices of the spans [start, start + length).

  Args:
    start: [B] int, first pixel of each span.
    length: [B] int >= 1, its length in pixels.
    size: output samples.
    in_size: the image's side along this axis.

  Returns:
    [B, size, in_size] float32: row s holds the weights output sample s
    gives the input pixels (at most 4 non-zero, summing to 1).
  """
  start = jnp.asarray(start, jnp.float32)[:, None]
  length = jnp.asarray(length, jnp.float32)[:, None]
  centre = start + (jnp.arange(size, dtype=jnp.float32) + 0.5) * (
      length / size) - 0.5  # [B, size], half-pixel centres
  floor = jnp.floor(centre)
  grid = jnp.arange(in_size, dtype=jnp.float32)
  weights = 0.
  for k in (-1., 0., 1., 2.):
    tap = floor + k
    inside = (tap >= start) & (tap <= start + length - 1)
    w = jnp.where(inside, _keys_cubic(centre - tap), 0.)
    weights = weights + w[..., None] * (tap[..., None] == grid)
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def crop_resize(images: jax.Array, box, size: int,
                flip: jax.Array | None = None) -> jax.Array:
  """Crops box (y0, x0, h, w) of each image and resizes it to size x size.

  Args:
    images: [B, H, W, 3] uint8 (0..255) or float (0..1).
    box: (y0, x0, crop_height, crop_width), each [B] (or broadcastable),
      whole numbers (ints, or floats as crops.sample_crop returns them).
    size: output side.
    flip: optional [B] bool: mirror that example horizontally.

  Returns:
    [B, size, size, 3] float32 in [0, 1].
  """
  b, h, w = images.shape[:3]
  y0, x0, ch, cw = (jnp.broadcast_to(jnp.asarray(v, jnp.int32), (b,))
                    for v in box)
  wy = resize_weights(y0, ch, size, h)
  wx = resize_weights(x0, cw, size, w)
  if flip is not None:
    wx = jnp.where(flip[:, None, None], wx[:, ::-1], wx)
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    wy = wy * (1. / 255.)
  x = jnp.einsum('bsh,bhwc->bswc', wy, x, precision=_HIGHEST)
  x = jnp.einsum('btw,bswc->bstc', wx, x, precision=_HIGHEST)
  return jnp.clip(x, 0., 1.)


def _random_views(images, idx, pos, step, key, *, size, views, flip,
                  min_area, gathered):
  """One device's crops: {'view1', ...} [b, size, size, 3] float32."""
  x = images if gathered else images[idx]
  h, w = x.shape[1:3]
  step_key = jax.random.fold_in(key, step)
  u = jax.vmap(lambda p: jax.random.uniform(
      jax.random.fold_in(step_key, p), (views, crops.NUM_U + 1)))(pos)
  out = {}
  for v in range(views):
    box = crops.sample_crop(jnp, u[:, v, :crops.NUM_U], float(h), float(w),
                            min_area)
    out[f'view{v + 1}'] = crop_resize(
        x, box, size, (u[:, v, crops.NUM_U] < 0.5) if flip else None)
  return out


def _center_view(images, idx, mask, *, size, gathered):
  """One device's centre crops, zero where mask is False."""
  x = images if gathered else images[idx]
  h, w = x.shape[1:3]
  box = crops.center_crop(np, float(h), float(w), size)
  image = crop_resize(x, box, size)
  return image * mask[:, None, None, None]


# ------------------------------------------------------------ placement
@dataclasses.dataclass
class Placed:
  """One split of an in-memory source, placed for the crops.

  Attributes:
    images: 'device': a [devices, N, H, W, 3] jax.Array, one copy per
      device; 'host': the [N, H, W, 3] numpy array.
    labels: [N] int32 numpy.
    devices: the devices the crops run on.
    on: 'device' or 'host'.
  """
  images: object
  labels: np.ndarray
  devices: tuple
  on: str

  @property
  def num_examples(self) -> int:
    """N, the number of images (and labels) of the split."""
    return len(self.labels)


def place(source, split: str, devices, on: str = 'device') -> Placed:
  """Puts a split of `source` where its crops will read it (once).

  The placement is kept on the source object, so the pre-training stream,
  the kNN monitor and linear evaluation share one copy per split.

  Args:
    source: a `sources.InMemorySource`.
    split: a raw split name of it.
    devices: the local devices that crop.
    on: 'device' (a copy on each device) or 'host'.

  Returns:
    A `Placed`. Its size per device is logged the first time.

  Raises:
    ValueError: `on` is not 'device' or 'host'.
  """
  if on not in ON:
    raise ValueError(f'in_memory_on={on!r}: use one of {", ".join(ON)}.')
  devices = tuple(devices)
  cache = source.__dict__.setdefault('_placed', {})
  key = (split, tuple(d.id for d in devices), on)
  if key not in cache:
    host = np.asarray(source.images[split])
    labels = np.asarray(source.labels[split], np.int32)
    mib = host.nbytes / 2**20
    if on == 'device':
      images = jax.make_array_from_single_device_arrays(
          (len(devices),) + host.shape, parallel.device_sharding(devices),
          [jax.device_put(host[None], d) for d in devices])
      logging.info('In-memory data %s split %r: %d images %s %s, %.1f MiB '
                   'on each of %d device(s) (%s).', source.name, split,
                   len(host), 'x'.join(map(str, host.shape[1:])), host.dtype,
                   mib, len(devices), devices[0].platform)
    else:
      images = host
      logging.info('In-memory data %s split %r: %d images %s %s, %.1f MiB '
                   'on the host (gathered there, cropped on %d device(s)).',
                   source.name, split, len(host),
                   'x'.join(map(str, host.shape[1:])), host.dtype, mib,
                   len(devices))
    cache[key] = Placed(images, labels, devices, on)
  return cache[key]


@functools.lru_cache(maxsize=32)
def _compiled(kind: str, devices: tuple, gathered: bool, **static):
  """jit(shard_map(per-device crop fn)) over `devices`, cached."""
  fn = _random_views if kind == 'random' else _center_view
  body = functools.partial(fn, gathered=gathered, **static)
  spec = jax.sharding.PartitionSpec(parallel.AXIS_NAME)

  def per_device(*args):  # each argument: this device's [1, ...] block
    out = body(*(a[0] for a in args))
    return jax.tree.map(lambda x: x[None], out)

  mesh = parallel.device_mesh(devices)
  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=spec,
                               out_specs=spec))


def _put(x, devices):
  return jax.device_put(x, parallel.device_sharding(devices))


def _images_arg(placed, idx):
  """The images argument: the placed copies, or the host-gathered batch."""
  if placed.on == 'device':
    return placed.images
  return _put(placed.images[idx], placed.devices)


def _key_data(seed: int) -> np.ndarray:
  """The raw threefry key [seed >> 32, seed & 0xffffffff], on the host.

  What jax.random.PRNGKey(seed) makes for seeds below 2**32; built here so
  any seed < 2**62 works whatever jax_enable_x64 says.
  """
  return np.asarray([seed >> 32, seed & 0xFFFFFFFF], np.uint32)


# ------------------------------------------------------------ iterators
def random_iterator(source, split, layout, seed, start_step, image_size,
                    views, flip, min_area=crops.AREA_RANGE[0], on='device'):
  """Infinite stream of random crops, made on the devices; see pipeline.py.

  Args:
    source: a `sources.InMemorySource`.
    split: a raw split name of `source` (already resolved).
    layout: pipeline.py's `_Layout` (this host's batch geometry).
    seed: data seed.
    start_step: first batch to yield.
    image_size: output side.
    views: crops per image (2 for BYOL, 1 for the linear probe).
    flip: whether to flip each view horizontally with probability 1/2.
    min_area: smallest crop area, as a fraction of the image.
    on: where the images live, 'device' or 'host'.

  Yields:
    {'view1', ..., 'label'}: jax.Arrays [local_devices, per_device, ...]
    sharded over the local devices (views float32 in [0, 1], label int32).
  """
  devices = _local_devices(layout)
  placed = place(source, split, devices, on)
  n = placed.num_examples
  global_batch = layout.host_batch * layout.count
  # This host's positions within a global batch, [devices, per_device].
  offsets = (layout.index * layout.host_batch +
             np.arange(layout.host_batch)).reshape(layout.devices, -1)
  key = jax.random.fold_in(_key_data(seed), crops.SALT_CROP)
  keys = _put(np.broadcast_to(np.asarray(key), (len(devices), 2)), devices)
  fn = _compiled('random', devices, on == 'host', size=image_size,
                 views=views, flip=flip, min_area=float(min_area))
  perms = {}
  step = start_step
  while True:
    pos = step * global_batch + offsets
    idx = np.empty_like(pos)
    for e in np.unique(pos // n):
      if e not in perms:
        if len(perms) > 1:
          perms.pop(min(perms))
        perms[e] = np.random.default_rng(
            [seed, crops.SALT_PERM, int(e)]).permutation(n)
      sel = pos // n == e
      idx[sel] = perms[e][pos[sel] % n]
    idx = idx.astype(np.int32)
    out = fn(_images_arg(placed, idx), _put(idx, devices),
             _put(offsets.astype(np.int32), devices),
             _put(np.full(len(devices), step, np.int32), devices), keys)
    out['label'] = _put(placed.labels[idx], devices)
    yield out
    step += 1


def eval_iterator(source, split, layout, image_size, on='device',
                  indices=None):
  """One padded pass over this host's shard, centre-cropped on the devices.

  Args:
    source: a `sources.InMemorySource`.
    split: a raw split name of `source` (already resolved).
    layout: pipeline.py's `_Layout`.
    image_size: output side.
    on: where the images live, 'device' or 'host'.
    indices: read only these examples of the split (in this order), from
      the split's one placed copy; None: all.

  Yields:
    {'image', 'label', 'mask'} jax.Arrays [local_devices, per_device, ...].
  """
  devices = _local_devices(layout)
  placed = place(source, split, devices, on)
  examples = (np.arange(placed.num_examples) if indices is None else
              np.asarray(indices))
  n = len(examples)
  shard = examples[layout.shard(n)]
  fn = _compiled('center', devices, on == 'host', size=image_size)
  for b in range(layout.num_eval_batches(n)):
    idx = shard[b * layout.host_batch:(b + 1) * layout.host_batch]
    mask = np.arange(layout.host_batch) < len(idx)
    idx = np.concatenate([idx, np.zeros(layout.host_batch - len(idx), int)])
    idx = idx.astype(np.int32).reshape(layout.devices, -1)
    mask = mask.reshape(layout.devices, -1)
    image = fn(_images_arg(placed, idx), _put(idx, devices),
               _put(mask, devices))
    yield {'image': image,
           'label': _put(np.where(mask, placed.labels[idx], 0).astype(
               np.int32), devices),
           'mask': _put(mask, devices)}


def _local_devices(layout):
  local = jax.local_devices()
  if layout.devices > len(local):
    raise ValueError(f'local_device_count={layout.devices} but this process '
                     f'has {len(local)} devices; in-memory data is cropped '
                     'on the devices')
  return tuple(local[:layout.devices])
