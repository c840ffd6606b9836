"""Normalisation layers and Weight Standardisation against NumPy references."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax.models import layers
from byol_jax.models import norms


def _apply(fn, x, is_training=True, rng=0):
  f = hk.transform_with_state(fn)
  params, state = f.init(jax.random.PRNGKey(rng), x, is_training)
  out, new_state = f.apply(params, state, None, x, is_training)
  return out, params, state, new_state


def _np_group_norm(x, groups, eps=1e-5):
  n, c = x.shape[0], x.shape[-1]
  g = x.reshape(n, -1, groups, c // groups).astype(np.float64)
  mean = g.mean(axis=(1, 3), keepdims=True)
  var = g.var(axis=(1, 3), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)


@pytest.mark.parametrize('kind,groups', [('gn', 4), ('gn', 16), ('ln', 1)])
def test_group_and_layer_norm_match_numpy(kind, groups):
  x = np.random.RandomState(0).randn(3, 5, 5, 16).astype(np.float32) * 3 + 1
  spec = norms.NormSpec(kind, groups=groups)
  out, *_ = _apply(lambda x, t: norms.make_norm(spec, 'n')(x, t), x)
  np.testing.assert_allclose(out, _np_group_norm(x, groups), atol=1e-4)
  # LN normalises over H, W and C jointly: one mean and variance per example.
  if kind == 'ln':
    flat = np.asarray(out).reshape(3, -1)
    np.testing.assert_allclose(flat.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(flat.std(1), 1, atol=1e-3)


def test_layer_norm_on_mlp_features_matches_numpy():
  x = np.random.RandomState(1).randn(4, 32).astype(np.float32)
  out, *_ = _apply(lambda x, t: norms.make_norm('ln', 'n')(x, t), x)
  ref = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_batch_norm_train_eval_and_debiased_moving_averages():
  rng = np.random.RandomState(2)
  batches = [
      rng.randn(8, 3, 3, 4).astype(np.float32) * (2 + i % 3) + 5 - i
      for i in range(10)
  ]
  f = hk.transform_with_state(lambda x, t: norms.make_norm('bn', 'bn')(x, t))
  params, state = f.init(None, batches[0], True)
  assert params['bn']['scale'].shape == (4,)  # [C], like GN / affine.
  step = jax.jit(lambda s, x: f.apply(params, s, None, x, True))
  evaluate = jax.jit(lambda s, x: f.apply(params, s, None, x, False)[0])
  # Before any update eval mode does not normalise (mean 0, variance 1).
  np.testing.assert_allclose(
      evaluate(state, batches[0]), batches[0] / np.sqrt(1 + 1e-5), rtol=1e-6
  )
  d = 0.9  # official BYOL decay; zero-debiased as hk.BatchNorm's EMA.
  hidden_m, hidden_v = np.zeros(4), np.zeros(4)
  for t, x in enumerate(batches, start=1):
    out, state = step(state, x)
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-5), atol=1e-4)
    hidden_m = d * hidden_m + (1 - d) * mean
    hidden_v = d * hidden_v + (1 - d) * var
    if t in (1, 2, 10):
      m_hat, v_hat = hidden_m / (1 - d**t), hidden_v / (1 - d**t)
      if t == 1:  # after one update: that batch's statistics exactly.
        np.testing.assert_allclose(m_hat, mean, rtol=1e-6)
      assert int(state['bn']['counter']) == t
      probe = batches[0]
      np.testing.assert_allclose(
          evaluate(state, probe),
          (probe - m_hat) / np.sqrt(v_hat + 1e-5),
          rtol=1e-4,
          atol=1e-4,
      )
  _, same = f.apply(params, state, None, batches[0], False)
  assert jax.tree.all(jax.tree.map(np.array_equal, same, state))


def test_batch_norm_variance_is_stable_for_large_means():
  """E[x^2] - E[x]^2 would give ~+-316 here, not +-1 (float32)."""
  x = np.array([4999.0, 5001.0] * 4, np.float32).reshape(8, 1)
  out, *_ = _apply(lambda x, t: norms.make_norm('bn', 'bn')(x, t), x)
  np.testing.assert_allclose(np.abs(out), 1.0, atol=1e-3)
  rng = np.random.RandomState(4)
  x = (1e4 + rng.randn(64, 4, 4, 3)).astype(np.float32)
  out, *_ = _apply(lambda x, t: norms.make_norm('bn', 'bn')(x, t), x)
  x64 = x.astype(np.float64)
  ref = (x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) + 1e-5)
  np.testing.assert_allclose(out, ref, atol=1e-3)


def test_cross_replica_moments_equal_the_global_batch():
  x = (1e3 + 3 * np.random.RandomState(5).randn(8, 6, 5)).astype(np.float32)
  mean, var = jax.pmap(lambda v: norms.batch_moments(v, 'i'), axis_name='i')(x)
  flat = x.reshape(-1, 5).astype(np.float64)
  np.testing.assert_allclose(mean[0], flat.mean(0), rtol=1e-6)
  np.testing.assert_allclose(var[0], flat.var(0), rtol=1e-4)


def test_affine_and_none():
  x = np.random.RandomState(3).randn(2, 4, 4, 8).astype(np.float32)
  out, params, state, _ = _apply(
      lambda x, t: norms.make_norm('affine', 'a')(x, t), x
  )
  np.testing.assert_array_equal(out, x)  # scale 1, offset 0 at init.
  assert sorted(params['a']) == ['offset', 'scale'] and not state
  out, params, *_ = _apply(lambda x, t: norms.make_norm('none', 'n')(x, t), x)
  np.testing.assert_array_equal(out, x)
  assert not params


def _np_ws(w, axes, eps=1e-4):
  w = w.astype(np.float64)
  mean = w.mean(axis=axes, keepdims=True)
  var = w.var(axis=axes, keepdims=True)
  return (w - mean) / np.sqrt(var + eps), var


def test_weight_standardization_statistics_and_reference():
  rs = np.random.RandomState(4)
  # Small raw weights make eps matter: var/(var+eps) is visibly below 1.
  w = (rs.randn(3, 3, 8, 5) * 0.01 + 0.3).astype(np.float32)
  ws = np.asarray(layers.standardize_weight(jnp.asarray(w), (0, 1, 2)))
  ref, var = _np_ws(w, (0, 1, 2))
  np.testing.assert_allclose(ws, ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ws.mean(axis=(0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(
      ws.var(axis=(0, 1, 2)), (var / (var + 1e-4)).ravel(), rtol=1e-4
  )
  # eps = 1e-4 really applied: max over the 5 units, 10 seeds (AMD EPYC):
  # 0.544 +- 0.030 (0.51..0.60): 0.8 is 8.5 sd; without eps: 1.
  assert np.all(ws.var(axis=(0, 1, 2)) < 0.8)


@pytest.mark.parametrize('layer', ['conv', 'linear'])
def test_ws_layers_forward_and_gradient_reach_raw_weights(layer):
  rs = np.random.RandomState(5)
  if layer == 'conv':
    x = rs.randn(2, 6, 6, 4).astype(np.float32)
    make = lambda ws: layers.Conv2D(7, 3, 1, ws, name='c')
    axes = (0, 1, 2)
  else:
    x = rs.randn(5, 12).astype(np.float32)
    make = lambda ws: layers.Linear(7, weight_standardization=ws, name='c')
    axes = (0,)
  f_ws = hk.without_apply_rng(hk.transform(lambda x: make(True)(x)))
  f_raw = hk.without_apply_rng(hk.transform(lambda x: make(False)(x)))
  params = f_ws.init(jax.random.PRNGKey(0), x)
  # No extra trainable parameter: the same tree as the plain layer.
  assert jax.tree.structure(params) == jax.tree.structure(
      f_raw.init(jax.random.PRNGKey(0), x)
  )
  # Forward = plain layer applied to the NumPy-standardised kernel.
  w_hat, _ = _np_ws(np.asarray(params['c']['w']), axes)
  std_params = jax.tree.map(lambda p: p, params)
  std_params['c'] = dict(params['c'], w=jnp.asarray(w_hat, jnp.float32))
  np.testing.assert_allclose(
      f_ws.apply(params, x), f_raw.apply(std_params, x), rtol=1e-4, atol=1e-4
  )
  # Gradients reach the raw W, and are orthogonal to per-unit shifts of W
  # (the output is invariant to adding a constant to a unit's fan-in).
  grad = jax.grad(lambda p: jnp.sum(jnp.sin(f_ws.apply(p, x))))(params)
  g = np.asarray(grad['c']['w'])
  assert np.linalg.norm(g) > 1e-3  # 10 seeds (AMD EPYC): 43..690.
  np.testing.assert_allclose(g.sum(axis=axes), 0, atol=1e-4)


def test_norm_kind_errors_name_the_field():
  with pytest.raises(ValueError, match=r"norm='bogus'.*bn, gn, ln, none"):
    norms.NormSpec('bogus')
  with pytest.raises(ValueError, match=r"model.encoder_norm='x'"):
    norms.check_norm_kind('x', field='model.encoder_norm')
  with pytest.raises(ValueError, match='groups=0'):
    norms.NormSpec('gn', groups=0)
  with pytest.raises(ValueError, match='groups=3 does not divide the 8'):
    _apply(
        lambda x, t: norms.make_norm(norms.NormSpec('gn', groups=3), 'g')(x, t),
        np.ones((1, 2, 2, 8)),
    )


def test_ws_linear_effective_weight_has_unit_statistics_per_output_unit():
  """Each output unit's fan-in (a column of W [in, out]) is standardised."""
  x = np.random.RandomState(6).randn(3, 64).astype(np.float32)
  f = hk.without_apply_rng(
      hk.transform(
          lambda x: layers.Linear(32, weight_standardization=True, name='l')(x)
      )
  )
  params = f.init(jax.random.PRNGKey(1), x)
  w = np.asarray(params['l']['w'], np.float64)
  w_hat = np.asarray(
      layers.standardize_weight(params['l']['w'], (0,)), np.float64
  )
  np.testing.assert_allclose(w_hat.mean(0), 0.0, atol=1e-6)
  # Unit variance up to eps: var / (var + 1e-4), var ~ 1/64 here.
  np.testing.assert_allclose(
      w_hat.var(0), w.var(0) / (w.var(0) + 1e-4), rtol=1e-4
  )
  np.testing.assert_allclose(w_hat.var(0), 1.0, atol=0.015)
  np.testing.assert_allclose(
      f.apply(params, x),
      x @ w_hat + np.asarray(params['l']['b']),
      rtol=1e-4,
      atol=1e-4,
  )
