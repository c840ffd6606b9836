"""Modified init (paper §3.2): the BN-free network reproduces BN at init."""

import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import modified_init
from byol_jax.config import configs
from byol_jax.methods import networks


def _affine_model():
  model = configs.model_config(
      depth=10,
      width_multiplier=0.25,
      stem='small',
      encoder_norm='affine',
      projector_norm='affine',
      predictor_norm='affine',
      projector_hidden_size=32,
      projector_output_size=16,
      predictor_hidden_size=32,
      zero_init_last=True,
  )  # gamma0 = 0, §3.2
  return model


def _bn_twin(model):
  """The model with BN (decay 0, per-device statistics) where it has affine.

  With decay 0 the BN state after one training-mode forward pass holds
  exactly that batch's mean and variance.
  """
  twin = model.copy_and_resolve_references()
  for component in modified_init.calibrated_components(model):
    twin[f'{component}_norm'] = 'bn'
  twin.bn_decay = 0.0
  twin.cross_replica_bn = False
  return twin


def _bn_statistics(model, num_classes, params, images, with_predictor=True):
  """{BN layer: (mean, var)} of one training-mode pass of the BN twin.

  The single-pass reference the chunked calibration is checked against.
  """
  forward = networks.make_forward(
      _bn_twin(model),
      num_classes,
      with_predictor=with_predictor,
      with_classifier=False,
      axis_name=None,
  )
  _, state = forward.init(jax.random.PRNGKey(0), images, True)
  _, stats = jax.jit(lambda p, x: forward.apply(p, state, None, x, True))(
      params, images
  )
  return {k: (v['mean'], v['var']) for k, v in stats.items()}


def _reference_outputs(
    model, num_classes, init_params, images, with_predictor=True
):
  """The BN twin's training-mode outputs on `images`."""
  forward = networks.make_forward(
      _bn_twin(model),
      num_classes,
      with_predictor=with_predictor,
      with_classifier=False,
      axis_name=None,
  )
  _, state = forward.init(jax.random.PRNGKey(0), images, True)
  out, _ = forward.apply(init_params, state, None, images, True)
  return out


def test_calibrated_network_equals_bn_network_on_the_calibration_batch():
  model = _affine_model()
  forward = networks.make_forward(
      model, 10, with_predictor=True, with_classifier=True
  )
  images = 2.0 * jax.random.normal(jax.random.PRNGKey(1), (32, 16, 16, 3)) + 1
  params, state = forward.init(jax.random.PRNGKey(0), images, True)
  assert state == {}  # no layer of the affine network keeps statistics.
  calibrated = modified_init.calibrate(model, 10, params, images)
  out, new_state = jax.jit(
      lambda p: forward.apply(p, state, None, images, True)
  )(calibrated)
  assert new_state == {}
  ref = _reference_outputs(model, 10, params, images)
  for key in ('representation', 'projection', 'prediction'):
    scale = float(jnp.max(jnp.abs(ref[key])))
    assert scale > 1e-3
    np.testing.assert_allclose(out[key], ref[key], atol=2e-4 * scale, rtol=1e-3)
  # ... and it differs from the uncalibrated affine network (identity norms).
  raw, _ = forward.apply(params, state, None, images, True)
  assert float(jnp.max(jnp.abs(raw['projection'] - ref['projection']))) > 1e-2
  # gamma0 = 0 for the last norm of each block: its calibrated scale stays 0;
  # gamma0 = 1 elsewhere: scale = 1/std > 0, and beta = -mean * gamma.
  last = calibrated['encoder/stage1_block0/norm_1']
  np.testing.assert_array_equal(last['scale'], 0.0)
  first = calibrated['encoder/stage1_block0/norm_0']
  assert np.all(first['scale'] > 0)
  assert not np.allclose(first['offset'], 0.0)
  # Only affine layers changed: every convolution is untouched.
  for name in params:
    if 'conv' in name or 'linear' in name:
      np.testing.assert_array_equal(calibrated[name]['w'], params[name]['w'])


def test_chunked_statistics_equal_the_single_pass_ones():
  """Layer by layer, 4 images per chunk, over 8 devices and 1: the BN
  twin's one-pass batch statistics within 1e-5 (relative)."""
  model = _affine_model()
  forward = networks.make_forward(
      model, 10, with_predictor=True, with_classifier=False
  )
  images = 2.0 * jax.random.normal(jax.random.PRNGKey(1), (36, 16, 16, 3)) + 1
  params, _ = forward.init(jax.random.PRNGKey(0), images, True)
  reference = _bn_statistics(model, 10, params, images)
  assert len(reference) == 14  # stem, 8 in blocks, 3 shortcuts, 2 heads
  runs = {
      'one pass': dict(devices=jax.local_devices()[:1]),
      '8 devices x 4': dict(chunk_size=4),  # 36 = 32 + a remainder of 4
      '1 device x 5': dict(chunk_size=5, devices=jax.local_devices()[:1]),
  }
  assert jax.local_device_count() == 8
  for label, kwargs in runs.items():
    calibrated, stats = modified_init.calibrate(
        model, 10, params, images, return_statistics=True, **kwargs
    )
    assert sorted(stats) == sorted(reference), label
    for name, (mean, var) in stats.items():
      ref_mean, ref_var = (np.asarray(v, np.float64) for v in reference[name])
      scale = np.abs(ref_mean).max() + np.sqrt(ref_var).max()
      np.testing.assert_allclose(
          mean, ref_mean, rtol=1e-5, atol=1e-5 * scale, err_msg=label + name
      )
      np.testing.assert_allclose(
          var,
          ref_var,
          rtol=1e-5,
          atol=1e-5 * ref_var.max(),
          err_msg=label + name,
      )
