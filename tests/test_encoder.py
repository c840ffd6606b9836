"""load_encoder / load_pretrained on a saved workdir, and 'linear_eval' mode.

The workdir is made by hand (config.json + one orbax checkpoint of a
TrainState filled with random values), as a pre-training run leaves it.
"""

import json

import haiku as hk
import jax
import numpy as np
import pytest

from byol_jax import augment
from byol_jax import encoder
from byol_jax import experiment
from byol_jax.config import configs
from byol_jax.config import plan
from byol_jax.evaluation import linear_eval
from byol_jax.methods import networks
from byol_jax.models import resnet
from byol_jax.training import checkpointing

STEP = 7


def tiny_run():
  return plan.build(configs.experiment_config('tiny'))


def random_tree(template, seed):
  """Random values with the template's shapes; BN variances positive."""
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = jax.tree_util.keystr(path)
    if not np.issubdtype(x.dtype, np.floating):
      return np.zeros(x.shape, x.dtype)
    value = rng.normal(0.0, 0.3, x.shape).astype(x.dtype)
    return np.abs(value) + 0.5 if "'var'" in name else value

  return jax.tree_util.tree_map_with_path(leaf, template)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  run = tiny_run()
  config = run.config
  state = random_tree(experiment.state_template(config, 10), seed=0)
  workdir = tmp_path_factory.mktemp('pretrain')
  (workdir / 'config.json').write_text(json.dumps(run.record(), indent=2))
  with checkpointing.Checkpointer(workdir / 'checkpoints') as ckpt:
    ckpt.save(STEP, state)
  return config, state, workdir


def images(n=5, size=16, seed=1):
  return (
      np.random.default_rng(seed)
      .uniform(0.0, 1.0, (n, size, size, 3))
      .astype(np.float32)
  )


def test_encoder_matches_make_forward_representation(saved):
  config, state, _ = saved
  forward = networks.make_forward(
      config.model, 10, with_predictor=False, with_classifier=False
  )
  x = images()
  shapes, _ = jax.eval_shape(
      lambda: forward.init(jax.random.PRNGKey(0), x, is_training=True)
  )
  # encoder_apply's network: make_encoder alone.
  transform = hk.transform_with_state(
      lambda x, is_training: networks.make_encoder(config.model)(x, is_training)
  )
  enc_shapes, _ = jax.eval_shape(
      lambda: transform.init(jax.random.PRNGKey(0), x, is_training=True)
  )
  assert jax.tree.map(lambda s: s.shape, enc_shapes) == jax.tree.map(
      lambda s: s.shape, networks.restrict(shapes, ('encoder',))
  )
  # Full online trees (with projector/predictor/classifier): extra modules
  # are ignored by encoder_apply, used by make_forward.
  params, net_state = state.online_params, state.online_state
  want, _ = jax.jit(
      lambda p, s: forward.apply(
          p, s, None, augment.normalize(x), is_training=False
      )
  )(params, net_state)
  got = jax.jit(encoder.encoder_apply(config))(params, net_state, x)
  np.testing.assert_allclose(got, want['representation'], rtol=1e-5, atol=1e-6)


def test_load_encoder_returns_checkpoint_features(saved):
  config, state, workdir = saved
  encode = encoder.load_encoder(str(workdir))
  assert encode.pretrained.step == STEP
  x = images(6)
  got = np.asarray(encode(x))
  dim = resnet.feature_size(config.model.depth, config.model.width_multiplier)
  assert got.shape == (6, dim)
  want = jax.jit(encoder.encoder_apply(config))(
      state.online_params, state.online_state, x
  )
  np.testing.assert_array_equal(got, np.asarray(want))
  # The checkpoint's BN statistics matter: fresh ones give other features.
  fresh_state = jax.tree.map(np.ones_like, state.online_state)
  other = jax.jit(encoder.encoder_apply(config))(
      state.online_params, fresh_state, x
  )
  assert np.abs(np.asarray(other) - got).max() > 1e-3
  with pytest.raises(ValueError, match=r'\[N, H, W, 3\]'):
    encode(x[0])


def test_missing_workdir_or_checkpoint_is_a_clear_error(tmp_path):
  missing = tmp_path / 'nope'
  with pytest.raises(
      FileNotFoundError, match=r'nope does not exist.*byol_jax\.main'
  ):
    encoder.load_encoder(str(missing))
  no_config = tmp_path / 'empty'
  no_config.mkdir()
  with pytest.raises(FileNotFoundError, match=r'empty/config\.json not found'):
    encoder.load_encoder(str(no_config))
  older = {k: v for k, v in tiny_run().record().items() if k != 'derived'}
  (no_config / 'config.json').write_text(json.dumps(older))
  with pytest.raises(ValueError, match=r'no derived section: an older version'):
    encoder.load_encoder(str(no_config))
  (no_config / 'config.json').write_text(json.dumps(tiny_run().record()))
  with pytest.raises(
      FileNotFoundError, match=r'empty/checkpoints holds no checkpoint'
  ):
    encoder.load_encoder(str(no_config))
  assert not (no_config / 'checkpoints').exists()  # nothing created
  (no_config / 'checkpoints').mkdir()
  with pytest.raises(FileNotFoundError, match='holds no checkpoint'):
    encoder.load_encoder(str(no_config))


def test_linear_eval_mode_uses_the_pretrained_model(saved, tmp_path):
  _, _, workdir = saved
  config = configs.experiment_config('tiny')
  config.mode = 'linear_eval'
  config.eval.update(
      dict(pretrain_workdir=str(workdir), augment=False, num_epochs=2)
  )
  config.data.source = ''  # '' = the pre-training run's data
  config.model.depth = 18  # ignored: the architecture is the checkpoint's
  run = plan.build(config)
  assert run.config.model.depth == 10 and run.config.data.source == 'digits'
  results = linear_eval.run_linear_eval_from_workdir(run, str(tmp_path))
  on_disk = json.loads((tmp_path / 'eval_results.json').read_text())
  assert on_disk == results
  assert results['checkpoint_step'] == STEP
  assert results['pretrain_workdir'] == str(workdir)
  assert results['steps'] == 2 * (1500 // 256)
  assert 0.0 <= results['top1'] <= results['top5'] <= 1.0
  config.eval.pretrain_workdir = ''
  with pytest.raises(
      plan.ConfigError,
      match="eval.pretrain_workdir='': set " 'it to the pre-training run',
  ):
    plan.build(config)


def test_random_encoder_is_a_function_of_the_seed():
  config = tiny_run().config
  params, state = encoder.random_encoder(config, 10)
  assert set(params) == set(networks.restrict(params, ('encoder',)))
  config.eval.num_epochs = 3  # eval settings do not change the init
  again, _ = encoder.random_encoder(config, 10)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  config.seed = 1
  other, _ = encoder.random_encoder(config, 10)
  assert any(
      np.any(a != b)
      for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(other))
  )
  assert jax.tree.structure(state) == jax.tree.structure(
      networks.restrict(
          experiment.state_template(config, 10).online_state, ('encoder',)
      )
  )
