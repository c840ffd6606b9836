"""Tests for byol_jax/losses.py: hand-computed values, symmetry, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import losses

# ---------------------------------------------------------------- BYOL loss.


def test_regression_loss_hand_computed_values():
  x = jnp.array([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 4.0], [0.0, 5.0]])
  y = jnp.array([[0.0, 3.0], [7.0, 0.0], [-2.0, 0.0], [4.0, 3.0], [0.0, 0.0]])
  # Orthogonal -> 2; parallel (different norms) -> 0; opposite -> 4;
  # 3-4-5: cos = (12 + 12) / 25 = 0.96 -> 2 - 1.92 = 0.08;
  # a zero target is normalised to 0 (safe eps) -> ||x/|x|||^2 = 1, no NaN.
  np.testing.assert_allclose(
      losses.regression_loss(x, y),
      [2.0, 0.0, 4.0, 0.08, 1.0],
      rtol=1e-6,
      atol=1e-6,
  )


def test_regression_loss_equals_two_minus_two_cos():
  x, y = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7))
  norms = np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)
  cos = np.sum(x * y, axis=-1) / norms
  np.testing.assert_allclose(
      losses.regression_loss(x, y), 2 - 2 * cos, rtol=1e-5, atol=1e-6
  )
  assert losses.regression_loss(x, y).shape == (5,)


def test_regression_loss_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match='same shape'):
    losses.regression_loss(jnp.ones((2, 3)), jnp.ones((2, 4)))


def test_byol_loss_hand_computed_and_symmetric():
  p1 = jnp.array([[1.0, 0.0], [3.0, 4.0]])
  p2 = jnp.array([[0.0, 1.0], [1.0, 1.0]])
  z1 = jnp.array([[0.0, 2.0], [-1.0, -1.0]])
  z2 = jnp.array([[5.0, 0.0], [4.0, 3.0]])
  # Example 0: (p1, z2) parallel -> 0; (p2, z1) parallel -> 0.
  # Example 1: (p1, z2) 3-4-5 -> 0.08; (p2, z1) opposite -> 4.
  # Mean over the batch of the per-example sums: (0 + 4.08) / 2.
  loss = losses.byol_loss(p1, p2, z1, z2)
  np.testing.assert_allclose(loss, 2.04, rtol=1e-6)
  # Swapping the views (both online and target) leaves the loss unchanged.
  np.testing.assert_allclose(losses.byol_loss(p2, p1, z2, z1), loss, rtol=1e-7)
  # ...while pairing a prediction with its own view's target changes it.
  assert abs(float(losses.byol_loss(p1, p2, z2, z1)) - 2.04) > 0.1


def test_byol_loss_gradient_flows_to_online_only():
  p1, p2, z1, z2 = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 8))
  grads = jax.grad(losses.byol_loss, argnums=(0, 1, 2, 3))(p1, p2, z1, z2)
  g_p1, g_p2, g_z1, g_z2 = grads
  np.testing.assert_array_equal(g_z1, 0.0)
  np.testing.assert_array_equal(g_z2, 0.0)
  # Least row norm, 10 keys (AMD EPYC): 0.078 +- 0.009 (0.065..0.088).
  assert float(jnp.min(jnp.linalg.norm(g_p1, axis=-1))) > 1e-3
  assert float(jnp.min(jnp.linalg.norm(g_p2, axis=-1))) > 1e-3


def test_byol_loss_float32_under_bfloat16_inputs():
  p1, p2, z1, z2 = jax.random.normal(jax.random.PRNGKey(2), (4, 6, 8))
  bf = [a.astype(jnp.bfloat16) for a in (p1, p2, z1, z2)]
  loss = losses.byol_loss(*bf)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, losses.byol_loss(p1, p2, z1, z2), atol=2e-2)


# ------------------------------------------------------------ classification.


def test_softmax_cross_entropy_and_topk():
  logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
  labels = jnp.array([2, 2])
  lse = np.log(np.exp(3.0) + np.exp(1.0) + np.exp(2.0) + 1.0)
  expected = (np.log(4.0) + (lse - 2.0)) / 2
  np.testing.assert_allclose(
      losses.softmax_cross_entropy(logits, labels), expected, rtol=1e-6
  )
  # Row 1 ranks classes 0 > 2 > 1 > 3: label 2 is 2nd.
  np.testing.assert_array_equal(
      losses.topk_correct(logits[1:], labels[1:], 1), [0.0]
  )
  np.testing.assert_array_equal(
      losses.topk_correct(logits[1:], labels[1:], 2), [1.0]
  )
  assert losses.topk_correct(logits, labels, 4).dtype == jnp.float32
  with pytest.raises(ValueError, match='k must be in'):
    losses.topk_correct(logits, labels, 5)


# ----------------------------------------------------------------- InfoNCE.


def _numpy_nt_xent(z1, z2, temperature):
  """Straightforward NT-Xent (SimCLR eq. 1), averaged over the 2N anchors."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z1)
  sim = z @ z.T / temperature
  losses_, correct = [], []
  for i in range(2 * n):
    pos = (i + n) % (2 * n)
    others = [j for j in range(2 * n) if j != i]
    log_denominator = np.log(np.sum(np.exp(sim[i, others])))
    losses_.append(log_denominator - sim[i, pos])
    correct.append(others[int(np.argmax(sim[i, others]))] == pos)
  return np.mean(losses_), np.mean(correct)


def test_infonce_matches_numpy_reference():
  z1, z2 = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (2, 16, 5)))
  # Correlated views: accuracy strictly between 0 and 1. 200 keys (AMD
  # EPYC): 0.51 +- 0.12 (0.22..0.84), 4 sd either side (6 examples: 0 or 1
  # for 9% of keys).
  z2 = z1 + 0.8 * z2
  loss, metrics = losses.infonce_loss(z1, z2, temperature=0.5)
  ref_loss, ref_acc = _numpy_nt_xent(z1, z2, 0.5)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['infonce_loss'], ref_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['contrastive_top1_acc'], ref_acc)
  assert 0 < ref_acc < 1


def test_infonce_hand_computed_two_examples():
  # Two images, identical views, orthogonal to each other: for every anchor the
  # positive has cosine 1 and the two negatives cosine 0, so with T = 1
  # loss = -log(e / (e + 2)) and every anchor is correct.
  z = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  loss, metrics = losses.infonce_loss(z, z, temperature=1.0)
  np.testing.assert_allclose(loss, np.log((np.e + 2) / np.e), rtol=1e-6)
  np.testing.assert_allclose(metrics['contrastive_top1_acc'], 1.0)


def test_infonce_rejects_bad_arguments():
  with pytest.raises(ValueError, match='temperature'):
    losses.infonce_loss(jnp.ones((2, 3)), jnp.ones((2, 3)), temperature=0.0)
  with pytest.raises(ValueError, match='same shape'):
    losses.infonce_loss(jnp.ones((2, 3)), jnp.ones((3, 3)), temperature=0.1)


def test_infonce_over_8_devices_equals_one_device():
  n_dev = 8
  assert jax.local_device_count() == n_dev, 'conftest sets 8 CPU devices'
  local = 3
  z1, z2 = jax.random.normal(jax.random.PRNGKey(4), (2, n_dev * local, 16))
  z2 = z1 + z2
  temperature = 0.2
  ref_loss, ref_metrics = losses.infonce_loss(z1, z2, temperature=temperature)

  @functools.partial(jax.pmap, axis_name='i')
  def per_device(a, b):
    loss, metrics = losses.infonce_loss(
        a, b, temperature=temperature, axis_name='i'
    )
    return loss, jax.lax.pmean(metrics, 'i')

  shard = lambda x: x.reshape(n_dev, local, -1)
  dev_loss, dev_metrics = per_device(shard(z1), shard(z2))
  # The per-device losses differ (different anchors) but their mean is the
  # global loss, with negatives drawn from all 8 devices.
  assert float(jnp.std(dev_loss)) > 1e-3  # 10 keys (AMD EPYC): 0.13..0.46.
  np.testing.assert_allclose(jnp.mean(dev_loss), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(
      dev_metrics['contrastive_top1_acc'], ref_metrics['contrastive_top1_acc']
  )
  # Local-only negatives (no all_gather) would give a different, lower loss.
  local_only = jax.vmap(
      functools.partial(losses.infonce_loss, temperature=temperature)
  )
  # ref - local-only, 10 keys (AMD EPYC): 1.15 +- 0.10 (1.01..1.39): 10 sd.
  assert float(jnp.mean(local_only(shard(z1), shard(z2))[0])) < (
      float(ref_loss) - 0.1
  )


def test_infonce_pmean_gradient_over_8_devices_equals_one_device():
  # Gradients of a shared parameter, pmean'd across devices (what the update
  # step does), equal the one-device gradient of the global loss.
  n_dev, local = 8, 2
  x1, x2 = jax.random.normal(jax.random.PRNGKey(5), (2, n_dev * local, 4))
  w = jax.random.normal(jax.random.PRNGKey(6), (4, 3))

  def loss_fn(w, a, b, axis_name=None):
    return losses.infonce_loss(
        a @ w, b @ w, temperature=0.3, axis_name=axis_name
    )[0]

  ref = jax.grad(loss_fn)(w, x1, x2)

  @functools.partial(jax.pmap, axis_name='i', in_axes=(None, 0, 0))
  def per_device(w, a, b):
    g = jax.grad(functools.partial(loss_fn, axis_name='i'))(w, a, b)
    return jax.lax.pmean(g, 'i')

  shard = lambda x: x.reshape(n_dev, local, -1)
  grads = per_device(w, shard(x1), shard(x2))
  np.testing.assert_allclose(grads[0], ref, rtol=1e-4, atol=1e-6)
  assert float(jnp.linalg.norm(ref)) > 1e-3  # 10 keys (AMD EPYC): 0.37..1.5


# losses.collapse_std (collapse statistics).
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
