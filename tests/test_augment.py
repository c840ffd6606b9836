"""Tests for byol_jax.augment: BYOL's per-view augmentation statistics."""

import dataclasses

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import augment

N = 2000  # draws for the frequency checks (std of a 0.2 fraction: 0.009)
MEAN = np.asarray(augment.MEAN_RGB, np.float32)
STD = np.asarray(augment.STDDEV_RGB, np.float32)


def _augment_view(key, images, *, view, config=None):
  """One key for the whole batch: sample_decisions then apply (the reference
  the per-example `augment.augment_examples` is checked against)."""
  config = config or augment.view_config(view)
  decisions = augment.sample_decisions(key, images.shape[0], config)
  return augment.normalize(
      augment.apply_augmentations(images, decisions, config)
  )


# Jitted once per shape/config: op-by-op eager dispatch is far slower on CPU.
augment_view = jax.jit(_augment_view, static_argnames=('view', 'config'))
apply_augmentations = jax.jit(
    augment.apply_augmentations, static_argnames='config'
)


@pytest.fixture(scope='module')
def colour_images():
  return jax.random.uniform(jax.random.PRNGKey(0), (N, 8, 8, 3))


@pytest.fixture(scope='module')
def outputs(colour_images):
  """augment_view of both views on N random colour images, unnormalised."""
  key = jax.random.PRNGKey(42)
  return {
      v: np.asarray(augment_view(key, colour_images, view=v)) * STD + MEAN
      for v in (1, 2)
  }, key


def test_view_configs_are_byols():
  v1, v2 = augment.VIEW1, augment.VIEW2
  for v in (v1, v2):
    assert (v.flip_prob, v.color_jitter_prob, v.grayscale_prob) == (
        0.5,
        0.8,
        0.2,
    )
    assert (v.brightness, v.contrast, v.saturation, v.hue) == (
        0.4,
        0.4,
        0.2,
        0.1,
    )
    assert (v.blur_sigma_min, v.blur_sigma_max, v.blur_divider) == (
        0.1,
        2.0,
        10.0,
    )
    assert v.solarize_threshold == 0.5
  assert (v1.blur_prob, v1.solarize_prob) == (1.0, 0.0)
  assert (v2.blur_prob, v2.solarize_prob) == (0.1, 0.2)
  assert augment.view_config(2) is v2
  with pytest.raises(ValueError, match='view'):
    augment.view_config(3)


def test_decision_frequencies():
  key = jax.random.PRNGKey(7)
  d1 = augment.sample_decisions(key, N, augment.VIEW1)
  d2 = augment.sample_decisions(key, N, augment.VIEW2)
  assert d1['blur'].all() and not d1['solarize'].any()
  # Binomial sd at N: 0.009 (p 0.2, 0.8), 0.011 (p 0.5), 0.0067 (p 0.1).
  # Measured over 10 keys (AMD EPYC): grayscale 0.206 +- 0.008, flip 0.504 +-
  # 0.013, jitter 0.805 +- 0.006, solarize 0.200 +- 0.008, blur 0.103 +-
  # 0.008; each bound is >= 4.5 binomial sd (a probability ignored: 0 or 1).
  for d in (d1, d2):
    assert abs(d['grayscale'].mean() - 0.2) < 0.04
    assert abs(d['flip'].mean() - 0.5) < 0.05
    assert abs(d['jitter'].mean() - 0.8) < 0.04
    np.testing.assert_array_equal(
        np.sort(d['order'], 1), np.tile(np.arange(4), (N, 1))
    )
    assert len({tuple(o) for o in np.asarray(d['order'])}) == 24
    assert float(d['sigma'].min()) >= 0.1 and float(d['sigma'].max()) <= 2.0
  assert abs(d2['solarize'].mean() - 0.2) < 0.04
  assert abs(d2['blur'].mean() - 0.1) < 0.03


def test_outputs_in_range_and_grayscale_fraction(outputs):
  out, key = outputs
  for v in (1, 2):
    assert out[v].dtype == np.float32 and out[v].shape == (N, 8, 8, 3)
    assert out[v].min() >= -1e-5 and out[v].max() <= 1 + 1e-5
    # Grayscale outputs have equal channels; nothing else can (random colour
    # inputs; saturation only scales by >= 0.8).
    spread = np.abs(out[v] - out[v].mean(-1, keepdims=True)).max((1, 2, 3))
    gray = spread < 1e-5
    # 10 keys (AMD EPYC): 0.200 +- 0.010; binomial sd 0.009: 4.5 sd.
    assert abs(gray.mean() - 0.2) < 0.04
    decided = augment.sample_decisions(key, N, augment.view_config(v))
    np.testing.assert_array_equal(gray, decided['grayscale'])


def _only(config, **keep):
  """`config` with every op but those in `keep` switched off."""
  off = dict(
      flip_prob=0.0,
      color_jitter_prob=0.0,
      grayscale_prob=0.0,
      blur_prob=0.0,
      solarize_prob=0.0,
  )
  return dataclasses.replace(config, **{**off, **keep})


def test_solarize_fraction_from_outputs():
  images = jnp.full((N, 4, 4, 3), 0.9)
  for view, expected in ((1, 0.0), (2, 0.2)):
    config = augment.view_config(view)
    config = _only(config, solarize_prob=config.solarize_prob)
    out = (
        augment_view(jax.random.PRNGKey(view), images, view=view, config=config)
        * STD
        + MEAN
    )
    solarized = np.isclose(np.asarray(out), 0.1, atol=1e-5).all((1, 2, 3))
    kept = np.isclose(np.asarray(out), 0.9, atol=1e-5).all((1, 2, 3))
    assert (solarized | kept).all()
    # 10 keys (AMD EPYC): 0.202 +- 0.008 (view 2); binomial sd 0.009: 4.5 sd.
    assert abs(solarized.mean() - expected) < 0.04
    if view == 1:
      assert not solarized.any()


def test_view1_always_blurred():
  checker = jnp.tile(
      jnp.asarray([[0.0, 1.0], [1.0, 0.0]])[..., None], (N // 4, 16, 16, 3)
  )  # [N/4, 32, 32, 3]
  key = jax.random.PRNGKey(3)
  config = _only(augment.VIEW1, blur_prob=1.0)
  out = apply_augmentations(
      checker, augment.sample_decisions(key, N // 4, config), config
  )
  d = augment.sample_decisions(key, N // 4, augment.VIEW1)
  changed = np.abs(np.asarray(out) - np.asarray(checker)).max((1, 2, 3)) > 0.01
  # sigma < 0.3 px is numerically the identity; every other draw must blur.
  assert (changed | (np.asarray(d['sigma']) < 0.3)).all()
  # 10 keys (AMD EPYC): 0.895 +- 0.013 (0.876..0.914): 7 sd; no blur: 0.
  assert changed.mean() > 0.8


def test_blur_matches_dm_pix():
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, 32, 32, 3))
  sigma = jnp.asarray([0.5, 1.0, 2.0])
  ours = jax.jit(augment._gaussian_blur, static_argnums=2)(x, sigma, 10.0)
  for i in range(3):  # official kernel size: side / 10 -> radius 1 at 32px
    ref = pix.gaussian_blur(x[i], sigma[i], kernel_size=32 / 10.0)
    np.testing.assert_allclose(ours[i], ref, atol=1e-5)


@pytest.mark.parametrize(
    'op,param,reference',
    [
        (0, 'brightness', lambda x, v: pix.adjust_brightness(x, v)),
        (1, 'contrast', lambda x, v: pix.adjust_contrast(x, v)),
        (2, 'saturation', lambda x, v: pix.adjust_saturation(x, v)),
        (3, 'hue', lambda x, v: pix.adjust_hue(x, v)),
    ],
)
def test_each_jitter_op_matches_dm_pix(op, param, reference):
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 3))
  d = augment.sample_decisions(jax.random.PRNGKey(2), 4, augment.VIEW2)
  neutral = dict(brightness=0.0, contrast=1.0, saturation=1.0, hue=0.0)
  d = {**d, **{k: jnp.full((4,), v) for k, v in neutral.items()}}
  d[param] = augment.sample_decisions(jax.random.PRNGKey(5), 4, augment.VIEW2)[
      param
  ]
  d['order'] = jnp.tile(
      jnp.asarray([op] + [k for k in range(4) if k != op]), (4, 1)
  )
  ours = jax.jit(augment._color_jitter)(x, d)
  want = jnp.clip(jax.jit(jax.vmap(reference))(x, d[param]), 0.0, 1.0)
  np.testing.assert_allclose(ours, want, atol=2e-5)


def test_keys_determine_outputs(colour_images, outputs):
  out, key = outputs
  a = np.asarray(augment_view(key, colour_images, view=2)) * STD + MEAN
  c = (
      np.asarray(
          augment_view(jax.random.fold_in(key, 1), colour_images, view=2)
      )
      * STD
      + MEAN
  )
  np.testing.assert_array_equal(a, out[2])  # same key, same output
  # Different keys: (almost) every example differs; an example that draws
  # "no op at all" under both keys (p = 0.058^2 for view 2) is left alone.
  # 10 keys (AMD EPYC): 0.993 +- 0.002 (0.991..0.997): 7 sd; same key: 0.
  assert (np.abs(a - c).max((1, 2, 3)) > 1e-3).mean() > 0.98


def test_normalize_and_pmap():
  np.testing.assert_allclose(
      augment.normalize(jnp.asarray(MEAN)), 0.0, atol=1e-6
  )
  np.testing.assert_allclose(
      augment.normalize(jnp.ones(3)), (1 - MEAN) / STD, rtol=1e-6
  )
  devices = jax.local_device_count()
  x = jax.random.uniform(jax.random.PRNGKey(0), (devices, 2, 8, 8, 3))
  keys = jax.random.split(jax.random.PRNGKey(0), devices)
  out = jax.pmap(lambda k, v: _augment_view(k, v, view=1))(keys, x)
  assert out.shape == x.shape
  np.testing.assert_allclose(
      out[1], augment_view(keys[1], x[1], view=1), atol=1e-5
  )


@pytest.mark.parametrize('size', [8, 32])
@pytest.mark.parametrize('view', [1, 2])
def test_augment_examples_equals_each_example_augmented_alone(size, view):
  """The step's batched augmentation (one key per example) is bit for bit
  augment_view of each example as a batch of one with its own key."""
  n = 64
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(3), i))(
      jnp.arange(n)
  )
  images = jax.random.uniform(jax.random.PRNGKey(size), (n, size, size, 3))
  alone = jax.jit(
      jax.vmap(lambda k, x: _augment_view(k, x[None], view=view)[0])
  )
  batched = jax.jit(augment.augment_examples, static_argnums=2)
  expected = np.asarray(alone(keys, images))
  np.testing.assert_array_equal(
      np.asarray(batched(keys, images, view)), expected
  )
  # Not vacuous: the examples were augmented differently.
  assert np.abs(expected - augment.normalize(images)).max() > 0.1
  assert len({float(x) for x in expected.mean((1, 2, 3))}) == n
