"""Tests for losses.collapse_std (collapse statistics)."""

import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import losses


def effective_rank(z):
  """exp(entropy of the normalised singular values) of [N, D] z (Roy &
  Vetterli, 2007): k for k equal non-zero singular values, 1 for identical
  rows; the dimensional-collapse companion of collapse_std used to check
  what collapse_std does not see."""
  s = jnp.linalg.svd(jnp.asarray(z, jnp.float32), compute_uv=False)
  p = s / jnp.maximum(jnp.sum(s), 1e-12)
  entropy = -jnp.sum(
      jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
  )
  return jnp.where(jnp.sum(s) > 0, jnp.exp(entropy), 0.0)


def test_collapse_std_isotropic_gaussian_is_one():
  z = np.random.RandomState(0).randn(4096, 256).astype(np.float32)
  value = float(losses.collapse_std(z))
  # 10 seeds (AMD EPYC): 0.99981 +- 0.00001.
  assert abs(value - 1.0) < 0.05, value


def test_collapse_std_identical_rows_is_zero():
  z = np.tile(np.random.RandomState(1).randn(1, 64), (128, 1))
  assert float(losses.collapse_std(z)) == pytest.approx(0.0, abs=1e-5)


def test_collapse_std_ignores_row_scale():
  z = np.random.RandomState(2).randn(256, 32).astype(np.float32)
  scale = np.random.RandomState(3).uniform(0.1, 10.0, (256, 1))
  np.testing.assert_allclose(
      losses.collapse_std(z), losses.collapse_std(z * scale), rtol=1e-5
  )


def test_collapse_std_rejects_1d():
  with pytest.raises(ValueError, match=r'\[N, D\]'):
    losses.collapse_std(np.ones(8))


@pytest.mark.parametrize('r', [1, 5, 16])
def test_effective_rank_equal_singular_values_is_r(r):
  rng = np.random.RandomState(r)
  u, _ = np.linalg.qr(rng.randn(200, r))
  v, _ = np.linalg.qr(rng.randn(64, r))
  z = 3.0 * u @ v.T  # r singular values, all equal to 3.
  assert float(effective_rank(z)) == pytest.approx(r, rel=1e-3)


def test_effective_rank_random_low_rank_data_is_near_r():
  rng = np.random.RandomState(4)
  z = rng.randn(1000, 8) @ rng.randn(8, 128)
  value = float(effective_rank(z))
  # Unequal singular values make it a bit below 8, never above. 10 seeds
  # (AMD EPYC): 7.926 +- 0.021 (7.89..7.96): 68 sd above 6.5.
  assert 6.5 < value <= 8.0 + 1e-3, value


def test_effective_rank_identical_rows_is_one():
  z = np.tile(np.random.RandomState(5).randn(1, 64), (128, 1))
  assert float(effective_rank(z)) == pytest.approx(1.0, abs=1e-3)
