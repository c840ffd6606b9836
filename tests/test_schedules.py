"""Tests for byol_jax/schedules.py: endpoints, slopes and exact midpoints."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import schedules

# base 0.2 at batch 512 -> peak 0.4 (BYOL: LearningRate = 0.2 x BatchSize/256).
LR = dict(
    base_learning_rate=0.2,
    global_batch_size=512,
    total_steps=1000,
    warmup_steps=100,
)
PEAK = 0.4


def test_learning_rate_endpoints_and_warmup_slope():
  lr = functools.partial(schedules.learning_rate, **LR)
  np.testing.assert_allclose(lr(0), 0.0, atol=0)
  np.testing.assert_allclose(lr(100), PEAK, rtol=1e-6)
  # Linear warmup: lr(k) = k / 100 * 0.4, slope 0.004 per step.
  np.testing.assert_allclose(lr(1), 0.004, rtol=1e-6)
  np.testing.assert_allclose(lr(37), 0.148, rtol=1e-6)
  np.testing.assert_allclose(lr(99), 0.396, rtol=1e-6)
  np.testing.assert_allclose(lr(1000), 0.0, atol=1e-7)
  np.testing.assert_allclose(lr(5000), 0.0, atol=1e-7)  # Stays 0 afterwards.


def test_learning_rate_cosine_values():
  lr = functools.partial(schedules.learning_rate, **LR)
  # Midpoint of the 900 decay steps: cos(pi/2) = 0 -> half the peak.
  np.testing.assert_allclose(lr(550), PEAK / 2, rtol=1e-6)
  # A quarter of the way: (1 + cos(pi/4)) / 2 * 0.4.
  np.testing.assert_allclose(lr(325), PEAK * (1 + np.sqrt(0.5)) / 2, rtol=1e-6)
  values = np.asarray(lr(jnp.arange(100, 1001)))
  assert np.all(np.diff(values) <= 0)


def test_learning_rate_inside_jit_with_int_steps():
  lr = jax.jit(functools.partial(schedules.learning_rate, **LR))
  steps = jnp.array([0, 50, 100, 550, 1000], dtype=jnp.int32)
  np.testing.assert_allclose(
      jax.vmap(lr)(steps), [0.0, 0.2, 0.4, 0.2, 0.0], rtol=1e-6, atol=1e-7
  )
  assert lr(jnp.int32(50)).dtype == jnp.float32


def test_learning_rate_without_warmup_and_all_warmup():
  no_warm = dict(LR, warmup_steps=0)
  np.testing.assert_allclose(
      schedules.learning_rate(0, **no_warm), PEAK, rtol=1e-6
  )
  np.testing.assert_allclose(
      schedules.learning_rate(500, **no_warm), PEAK / 2, rtol=1e-6
  )
  all_warm = dict(LR, warmup_steps=1000)
  np.testing.assert_allclose(
      schedules.learning_rate(500, **all_warm), PEAK / 2, rtol=1e-6
  )
  assert np.isfinite(schedules.learning_rate(1000, **all_warm))


@pytest.mark.parametrize(
    'override,field',
    [
        (dict(warmup_steps=1001), 'warmup_steps'),
        (dict(warmup_steps=-1), 'warmup_steps'),
        (dict(total_steps=0, warmup_steps=0), 'total_steps'),
        (dict(global_batch_size=0), 'global_batch_size'),
        (dict(base_learning_rate=-1.0), 'base_learning_rate'),
    ],
)
def test_learning_rate_validates_arguments(override, field):
  with pytest.raises(ValueError, match=field):
    schedules.learning_rate(0, **dict(LR, **override))


def test_target_ema_schedule():
  tau = functools.partial(
      schedules.target_ema, base_ema=0.996, total_steps=1000
  )
  np.testing.assert_allclose(tau(0), 0.996, rtol=1e-7)
  np.testing.assert_allclose(tau(1000), 1.0, rtol=1e-7)
  np.testing.assert_allclose(tau(2000), 1.0, rtol=1e-7)
  # Midpoint: 1 - 0.004 * (cos(pi/2) + 1) / 2 = 0.998.
  np.testing.assert_allclose(tau(500), 0.998, rtol=1e-7)
  np.testing.assert_allclose(
      tau(250), 1 - 0.004 * (np.sqrt(0.5) + 1) / 2, rtol=1e-7
  )
  values = np.asarray(jax.jit(jax.vmap(tau))(jnp.arange(0, 1001)))
  assert np.all(np.diff(values) >= 0) and values[-1] > values[0]


@pytest.mark.parametrize(
    'kwargs,field',
    [
        (dict(base_ema=1.5, total_steps=10), 'base_ema'),
        (dict(base_ema=-0.1, total_steps=10), 'base_ema'),
        (dict(base_ema=0.99, total_steps=0), 'total_steps'),
    ],
)
def test_target_ema_validates_arguments(kwargs, field):
  with pytest.raises(ValueError, match=field):
    schedules.target_ema(0, **kwargs)
