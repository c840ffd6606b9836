"""The official BYOL crop sampler over a numpy-like `xp` (jax.numpy, tf.math,
numpy); boxes (y0, x0, height, width) are floats of whole numbers."""

import math

# As byol/utils/dataset.py's _decode_and_random_crop: ONE draw of area and log
# aspect ratio, clamped to the image, not redrawn (torchvision's and SimCLR's
# retry up to 10 times, which biases them towards smaller crops).
AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
# Eval: centre crop of 224/256 of the shorter side (official); a shorter side
# already <= image_size (32px CIFAR, 8px digits): the central square, resized.
CENTER_CROP_FRACTION = 224.0 / 256.0
NUM_U = 4  # uniforms per crop: area, log-ratio, y offset, x offset.
# Salts of the stateless random draws (see pipeline.py's docstring).
SALT_PERM, SALT_CROP, SALT_FILES, SALT_WINDOW = 1, 2, 3, 4


def sample_crop(xp, u, height, width, min_area=AREA_RANGE[0]):
  """The official sampler's box from uniforms u [..., NUM_U], in u's dtype."""
  area = height * width * (min_area + (AREA_RANGE[1] - min_area) * u[..., 0])
  lo, hi = math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])
  ratio = xp.exp(lo + (hi - lo) * u[..., 1])
  # round(): half-to-even in numpy, jax.numpy and tf.math, as official tf.round.
  cw = xp.minimum(xp.maximum(xp.round(xp.sqrt(area * ratio)), 1.0), width)
  ch = xp.minimum(xp.maximum(xp.round(xp.sqrt(area / ratio)), 1.0), height)
  y0 = xp.floor(u[..., 2] * (height - ch + 1))
  x0 = xp.floor(u[..., 3] * (width - cw + 1))
  return y0, x0, ch, cw


def center_crop(xp, height, width, image_size):
  """The eval box (y0, x0, side, side); see CENTER_CROP_FRACTION."""
  side = xp.minimum(height, width)
  # `cut` is 0 or 1 (whole sides), by minimum/maximum: tf.math has no `where`.
  cut = xp.minimum(xp.maximum(side - image_size, 0.0), 1.0)
  crop = side - cut * (side - xp.floor(side * CENTER_CROP_FRACTION))
  y0, x0 = xp.floor((height - crop + 1) / 2), xp.floor((width - crop + 1) / 2)
  return y0, x0, crop, crop
