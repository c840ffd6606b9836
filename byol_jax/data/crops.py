"""Crop boxes and the numpy bicubic resize shared by both host streams.

`sample_crop` (random-resized crop) and `center_crop` (eval) are written once
against a tiny numpy-like namespace `xp`: `numpy` for the in-memory stream
(`np_stream.py`) and `TfOps(tf)` for the tf.data one (`tf_stream.py`), so both
streams cut exactly the same boxes from the same uniforms. `np_crop_resize`
is the numpy twin of TF's bicubic resize (Keys' kernel, half-pixel centres),
then clip to [0, 1], as the official byol/utils/dataset.py.

No TensorFlow import here: `TfOps` receives the module from its caller.
"""
import concurrent.futures
import math
import os

import numpy as np

# Random-resized crop, the official BYOL sampler (byol/utils/dataset.py,
# _decode_and_random_crop): ONE draw of the area fraction ~ U[0.08, 1] and of
# the log aspect ratio ~ U[log 3/4, log 4/3]; width = round(sqrt(area x
# ratio)), height = round(sqrt(area / ratio)), each clamped to the image; the
# box is placed uniformly. No rejection: a draw that overflows the image is
# clamped, not redrawn (torchvision's RandomResizedCrop and SimCLR's
# sample_distorted_bounding_box retry up to 10 times and then fall back,
# which biases them towards smaller crops).
AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3. / 4., 4. / 3.)
# Eval: centre crop of 224/256 of the shorter side, then resize (official
# byol/utils/dataset.py). Images whose shorter side is already <= image_size
# (32px CIFAR, 8px digits) are not cropped: the central square is resized.
CENTER_CROP_FRACTION = 224. / 256.
NUM_U = 4  # uniforms per crop: area, log-ratio, y offset, x offset.
# Salts of the stateless random draws (see pipeline.py's docstring): the same
# values in both streams, so a (seed, epoch, index, view) draws the same.
SALT_PERM, SALT_CROP, SALT_FILES, SALT_WINDOW = 1, 2, 3, 4


def sample_crop(xp, u, height, width, min_area=AREA_RANGE[0],
                index_dtype='int64'):
  """Random-resized-crop box from uniforms: the official BYOL sampler.

  area = U[min_area, 1] x height x width, ratio = exp(U[log 3/4, log 4/3]),
  crop width = min(round(sqrt(area x ratio)), width), crop height =
  min(round(sqrt(area / ratio)), height) (at least 1 pixel), offsets uniform
  over the positions where the box fits.

  Args:
    xp: `numpy`, `jax.numpy` (the in-memory path, on device) or a `TfOps`
      (the same few numpy functions in TensorFlow).
    u: [..., NUM_U] float uniforms in [0, 1); the arithmetic runs in their
      dtype (float64 on the host, float32 on device).
    height: image height(s), broadcastable to u[..., 0].
    width: image width(s).
    min_area: smallest crop area as a fraction of the image (BYOL: 0.08).
    index_dtype: dtype of the returned box ('int32' under JAX).

  Returns:
    (y0, x0, crop_height, crop_width) integer arrays of shape u.shape[:-1].
  """
  h = xp.asarray(height, u.dtype)
  w = xp.asarray(width, u.dtype)
  area = h * w * (min_area + (AREA_RANGE[1] - min_area) * u[..., 0])
  lo, hi = math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])
  ratio = xp.exp(lo + (hi - lo) * u[..., 1])
  # round() is half-to-even in both numpy and TF, as tf.round officially.
  cw = xp.minimum(xp.maximum(xp.round(xp.sqrt(area * ratio)), 1.), w)
  ch = xp.minimum(xp.maximum(xp.round(xp.sqrt(area / ratio)), 1.), h)
  y0 = xp.floor(u[..., 2] * (h - ch + 1))
  x0 = xp.floor(u[..., 3] * (w - cw + 1))
  return tuple(xp.asarray(v, index_dtype) for v in (y0, x0, ch, cw))


class TfOps:
  """The numpy functions `sample_crop` / `center_crop` use, in TensorFlow."""

  def __init__(self, tf):
    self.float64, self.int64 = tf.float64, tf.int64
    self.asarray = lambda x, dtype: tf.cast(x, dtype)
    self.arange = lambda n, dtype: tf.range(n, dtype=dtype)
    self.min = lambda x, axis: tf.reduce_min(x, axis)
    self.sum = lambda x, axis: tf.reduce_sum(x, axis)
    self.exp, self.sqrt, self.floor = tf.exp, tf.sqrt, tf.floor
    self.round = tf.round  # half to even, as np.round
    self.minimum, self.maximum = tf.minimum, tf.maximum
    self.where = tf.where


def center_crop(xp, height, width, image_size):
  """Centre-crop box (y0, x0, side, side); see CENTER_CROP_FRACTION."""
  side = xp.minimum(height, width)
  fraction = xp.asarray(side, xp.float64) * CENTER_CROP_FRACTION
  crop = xp.where(side > image_size, xp.asarray(fraction, xp.int64),
                  xp.asarray(side, xp.int64))
  return ((height - crop + 1) // 2, (width - crop + 1) // 2, crop, crop)


# ------------------------------------------------ numpy bicubic crop-resize
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


def np_crop_resize(images, box, size, flip=None):
  """Crops box (y0, x0, h, w) of each image, bicubic-resizes to size^2.

  Separable 4-tap gathers (rows, then columns) on chunks of about 1 MB
  spread over a thread pool; a flip reverses the column taps. uint8 images
  are scaled to [0, 1].

  Args:
    images: [B, H, W, 3] uint8 (0..255) or float (0..1) images.
    box: (y0, x0, crop_height, crop_width), each a scalar or a [B] array.
    size: output side.
    flip: optional [B] bool, True to mirror that image horizontally.

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
