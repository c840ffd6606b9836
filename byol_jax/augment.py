"""BYOL's image augmentations, on device, as pure functions of explicit keys.

After the pipeline's crop and resize, per example and view (BYOL Appendix B,
Table 6; official byol/utils/augmentations.py): flip -> colour jitter (random
order) -> grayscale -> blur -> solarize -> clip to [0, 1] -> normalisation.
Choices are `jnp.where` selects, not `lax.cond` (under vmap a cond evaluates
both branches anyway; selects fuse): each op runs on the whole batch (view
2's blur kept for 10%), memory-bound and cheap next to the ResNet step.
"""

import dataclasses

import dm_pix as pix
import jax
import jax.numpy as jnp

# ImageNet statistics as in the official byol/utils/dataset.py.
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ViewConfig:
  """Per-view augmentation parameters (paper Table 6 / official augment_config).

  Jitter's four ops, each clipped to [0, 1]: brightness adds U[-b, b];
  contrast (around the channel mean) and saturation multiply by U[1 - c,
  1 + c]; hue adds U[-h, h] turns. Blur: kernel side ~ image side /
  blur_divider, sigma U[min, max] px. Solarize inverts pixels >= threshold.
  """

  flip_prob: float = 0.5
  color_jitter_prob: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.2
  hue: float = 0.1
  grayscale_prob: float = 0.2
  blur_prob: float = 1.0
  blur_divider: float = 10.0
  blur_sigma_min: float = 0.1
  blur_sigma_max: float = 2.0
  solarize_prob: float = 0.0
  solarize_threshold: float = 0.5


# T and T' of the paper (Table 6): blur always in view 1 and 10% in view 2;
# solarisation never in view 1 and 20% in view 2.
VIEW1 = ViewConfig(blur_prob=1.0, solarize_prob=0.0)
VIEW2 = ViewConfig(blur_prob=0.1, solarize_prob=0.2)


def view_config(view: int) -> ViewConfig:
  """VIEW1 or VIEW2 for view 1 or 2; ValueError otherwise."""
  if view not in (1, 2):
    raise ValueError(f'view must be 1 or 2, got {view!r}')
  return VIEW1 if view == 1 else VIEW2


def normalize(images: jax.Array) -> jax.Array:
  """(images [..., 3] in [0, 1] - ImageNet mean) / std, float32."""
  mean, std = (jnp.asarray(v, jnp.float32) for v in (MEAN_RGB, STDDEV_RGB))
  return (jnp.asarray(images, jnp.float32) - mean) / std


def sample_decisions(
    key: jax.Array, batch_size: int, config: ViewConfig
) -> dict[str, jax.Array]:
  """Every random choice of one view for `batch_size` examples: {name: [B]}
  (bools: flip, jitter, grayscale, blur, solarize; the rest float32) and
  'order' [B, 4], the jitter order (0 brightness ... 3 hue)."""
  keys = jax.random.split(key, 11)

  def uniform(k, lo=0.0, hi=1.0):
    return jax.random.uniform(k, (batch_size,), jnp.float32, lo, hi)

  # `u < p` is True with probability p and never for p = 0, always for p = 1.
  c = config
  return {
      'flip': uniform(keys[0]) < c.flip_prob,
      'jitter': uniform(keys[1]) < c.color_jitter_prob,
      # argsort of i.i.d. uniforms is a uniformly random permutation.
      'order': jnp.argsort(jax.random.uniform(keys[2], (batch_size, 4)), -1),
      'brightness': uniform(keys[3], -c.brightness, c.brightness),
      'contrast': uniform(keys[4], 1.0 - c.contrast, 1.0 + c.contrast),
      'saturation': uniform(keys[5], 1.0 - c.saturation, 1.0 + c.saturation),
      'hue': uniform(keys[6], -c.hue, c.hue),
      'grayscale': uniform(keys[7]) < c.grayscale_prob,
      'blur': uniform(keys[8]) < c.blur_prob,
      'sigma': uniform(keys[9], c.blur_sigma_min, c.blur_sigma_max),
      'solarize': uniform(keys[10]) < c.solarize_prob,
  }


def _per_example(v):
  return v[:, None, None, None]


def _color_jitter(x, d):
  """Brightness, contrast, saturation, hue in the per-example order d['order'].

  Each of the 4 stages computes one affine op (brightness or contrast) and one
  HSV round trip (saturation or hue), neutral for the op not chosen, and
  selects: 4 HSV round trips instead of 8.
  """

  def stage(i, x):
    op = d['order'][:, i]
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)  # per channel, as official
    is_b, is_c = _per_example(op == 0), _per_example(op == 1)
    factor, delta = _per_example(d['contrast']), _per_example(d['brightness'])
    a = jnp.where(is_c, factor, 1.0)
    b = jnp.where(is_b, delta, jnp.where(is_c, (1.0 - factor) * mean, 0.0))
    affine = jnp.clip(a * x + b, 0.0, 1.0)
    h, s, v = jnp.moveaxis(pix.rgb_to_hsv(x), -1, 0)
    sat = jnp.where(op == 2, d['saturation'], 1.0)[:, None, None]
    hue = jnp.where(op == 3, d['hue'], 0.0)[:, None, None]
    hsv = jnp.stack([(h + hue) % 1.0, jnp.clip(s * sat, 0.0, 1.0), v], -1)
    shifted = jnp.clip(pix.hsv_to_rgb(hsv), 0.0, 1.0)
    return jnp.where(_per_example(op < 2), affine, shifted)

  # Unrolled: a lax.fori_loop halves compile time (2.0 -> 1.0 s) but blocks
  # fusion across stages and ran 2.6x slower (64x224x224 batch on CPU).
  for i in range(4):
    x = stage(i, x)
  return x


def _gaussian_blur(x, sigma, divider):
  """Separable Gaussian blur, per-example sigma, zero 'SAME' padding.

  Radius int(side / divider / 2) as the official code (23 taps at 224 px), at
  least 1 so that 8 px digits are still blurred. Shifted adds, not
  dm_pix.gaussian_blur: a per-example sigma under vmap makes its depthwise conv
  a B*C-group convolution; shifted adds fuse into one elementwise loop.
  """
  r = max(1, int(x.shape[1] / divider / 2))
  taps = jnp.arange(-r, r + 1, dtype=jnp.float32)
  w = jnp.exp(-taps[None] ** 2 / (2.0 * sigma[:, None] ** 2))
  w = w / jnp.sum(w, axis=1, keepdims=True)  # [B, 2r+1]
  for axis in (2, 1):  # horizontal then vertical, as the official code
    xp = jnp.pad(x, [(r, r) if a == axis else (0, 0) for a in range(4)])
    size = x.shape[axis]
    x = sum(
        _per_example(w[:, k]) * jax.lax.slice_in_dim(xp, k, k + size, axis=axis)
        for k in range(2 * r + 1)
    )
  return x


def apply_augmentations(
    images: jax.Array, decisions: dict[str, jax.Array], config: ViewConfig
) -> jax.Array:
  """One view's decisions on [B, H, W, 3] in [0, 1] -> float32 in [0, 1]
  (`config` static: ops of probability 0 are skipped)."""
  d, c = decisions, config
  select = lambda name, y, x: jnp.where(_per_example(d[name]), y, x)
  x = jnp.asarray(images, jnp.float32)
  x = select('flip', x[:, :, ::-1], x)
  if c.color_jitter_prob > 0:
    x = select('jitter', _color_jitter(x, d), x)
  if c.grayscale_prob > 0:
    x = select('grayscale', pix.rgb_to_grayscale(x, keep_dims=True), x)
  if c.blur_prob > 0:
    x = select('blur', _gaussian_blur(x, d['sigma'], c.blur_divider), x)
  if c.solarize_prob > 0:
    x = select('solarize', pix.solarize(x, c.solarize_threshold), x)
  return jnp.clip(x, 0.0, 1.0)


def augment_examples(
    keys: jax.Array, images: jax.Array, view: int
) -> jax.Array:
  """BYOL augmentation of one view, one key per example, normalised.

  Ours per example (decisions drawn per key, vmapped, applied batch-wide):
  an example's augmentation then does not depend on the device split.

  keys [B] (experiment.example_keys); images [B, H, W, 3] float in [0, 1]
  (the pipeline's crops); view 1 or 2 (VIEW1 / VIEW2; else ValueError).
  Returns [B, H, W, 3] float32, normalised with the ImageNet mean and std.
  """
  config = view_config(view)
  decisions = jax.vmap(lambda key: sample_decisions(key, 1, config))(keys)
  decisions = jax.tree.map(lambda d: d[:, 0], decisions)
  return normalize(apply_augmentations(images, decisions, config))
