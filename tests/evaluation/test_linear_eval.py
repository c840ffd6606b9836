"""Linear evaluation and kNN on the digits with the tiny random encoder.

Measured (2-core AMD EPYC, tiny config: ResNet-10 x1/4, 16 px; the encoder is
the seed's initialisation, BN with its initial statistics): linear probe on
frozen centre-crop features, 20 epochs x 5 steps at batch 256, lr 0.4, over
config.seed 0..7: top-1 0.761 +- 0.029 (0.73..0.81), top-5 0.977 +- 0.008,
kNN (k=20, T=0.07) top-1 0.910 +- 0.013; seed 0: 0.781 / 0.983 / 0.902;
chance is 10%. 1 device and 8 devices gave the same numbers for every seed.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import encoder
from byol_jax import losses
from byol_jax.config import configs
from byol_jax.config import plan
from byol_jax.evaluation import features
from byol_jax.evaluation import linear_eval
from byol_jax.evaluation import probe
from byol_jax.training import workdir as workdir_lib

CHANCE = 0.1  # 10 balanced-ish digit classes


def tiny_inputs(**eval_overrides):
  config = configs.experiment_config('tiny')
  config.eval.update(dict(num_epochs=20, augment=False, random_baseline=False))
  config.eval.update(eval_overrides)
  return config


def tiny_run(**eval_overrides):
  return plan.build(tiny_inputs(**eval_overrides))


@pytest.fixture(scope='module')
def setup():
  run = plan.build(tiny_inputs())
  params, state = encoder.random_encoder(run.config, run.data.num_classes)
  return run.config, run.source, params, state


@pytest.fixture(scope='module')
def eight_device_run(setup, tmp_path_factory):
  """The fast path on 8 devices, with the random baseline switched on."""
  config, source, params, state = setup
  assert jax.local_device_count() == 8
  workdir = tmp_path_factory.mktemp('linear_eval')
  results = linear_eval.run_linear_eval(
      tiny_run(random_baseline=True), str(workdir), params, state, tag='t'
  )
  return workdir, results


def test_fast_path_beats_chance_and_writes_results(eight_device_run):
  workdir, results = eight_device_run
  on_disk = json.loads((workdir / workdir_lib.EVAL_RESULTS).read_text())
  assert on_disk == results
  for key in (
      'top1',
      'top5',
      'knn_top1',
      'num_train',
      'num_test',
      'epochs',
      'steps',
      'tag',
  ):
    assert key in on_disk, key
  assert (results['num_train'], results['num_test']) == (1500, 297)
  assert (results['epochs'], results['steps']) == (20, 20 * (1500 // 256))
  assert results['tag'] == 't'
  # 8 seeds (module docstring): each bound is >= 16 sd below; chance is 0.1
  # (top-5: 0.5).
  assert results['top1'] > 3 * CHANCE
  assert results['top5'] >= results['top1'] and results['top5'] > 0.7
  assert results['knn_top1'] > 4 * CHANCE
  # The evaluated encoder *is* the seed-0 initialisation, so the random
  # baseline must reproduce its numbers exactly.
  random_init = results['random_init']
  assert random_init['top1'] == results['top1']
  assert random_init['knn_top1'] == results['knn_top1']


def test_one_device_matches_eight_devices(setup, eight_device_run, tmp_path):
  config, source, params, state = setup
  _, eight = eight_device_run
  one = linear_eval.run_linear_eval(
      tiny_run(),
      str(tmp_path),
      params,
      state,
      devices=jax.local_devices()[:1],
  )
  assert 'random_init' not in one
  assert one['steps'] == eight['steps']
  assert one['knn_top1'] == eight['knn_top1']  # same features either way.
  # The random-init probe's logits are nearly tied (features std ~0.03), so
  # float summation order (1 vs 8 devices) may swap a few near-ties: allow
  # two test images for top-1 and a few percent for top-5 (seen: 0.922 vs
  # 0.879 with an earlier tiny config; 0 difference for seeds 0..7 on AMD
  # EPYC). A missing gradient pmean trains a different classifier per device.
  assert abs(one['top1'] - eight['top1']) <= 2 / one['num_test'] + 1e-6
  assert abs(one['top5'] - eight['top5']) <= 0.06


def test_augmented_path_leaves_encoder_unchanged(setup, tmp_path):
  config, source, params, state = setup
  run = tiny_run(augment=True, num_epochs=1)
  before = jax.tree.map(np.array, (params, state))
  results = linear_eval.run_linear_eval(run, str(tmp_path), params, state)
  assert results['augment'] is True and results['steps'] == 1500 // 256
  assert 0.0 <= results['top1'] <= results['top5'] <= 1.0
  after = jax.tree.map(np.asarray, (params, state))
  assert jax.tree.structure(after) == jax.tree.structure(before)
  for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)


def test_probe_loss_sends_no_gradient_into_the_encoder(setup):
  config, _, params, state = setup
  loss_fn = probe.make_loss(config, 10, encode=True)
  images = jax.random.uniform(jax.random.PRNGKey(1), (8, 16, 16, 3))
  labels = jnp.arange(8) % 10
  classifier = probe.classifier(10)
  clf = classifier.init(jax.random.PRNGKey(0), jnp.zeros((1, 128)))
  clf = jax.tree.map(lambda x: x + 0.1, clf)  # non-zero: encoder grads flow
  grad_fn = jax.jit(
      jax.grad(
          lambda c, p: loss_fn(c, p, state, images, labels)[0], argnums=(0, 1)
      )
  )
  clf_grads, enc_grads = grad_fn(clf, params)
  assert all(np.all(np.asarray(g) == 0.0) for g in jax.tree.leaves(enc_grads))
  assert any(np.any(np.asarray(g) != 0.0) for g in jax.tree.leaves(clf_grads))

  # Without the stop-gradient the encoder would get a gradient.
  def leaky(c, p):
    feats = encoder.encoder_apply(config)(p, state, images)
    return losses.softmax_cross_entropy(classifier.apply(c, feats), labels)

  leak = jax.jit(jax.grad(leaky, argnums=1))(clf, params)
  assert any(np.any(np.asarray(g) != 0.0) for g in jax.tree.leaves(leak))


def test_knn_eval_above_chance(setup, eight_device_run):
  config, source, params, state = setup
  acc = features.knn_eval(config, 10, source, params, state)
  assert 0.0 <= acc <= 1.0
  assert acc > 4 * CHANCE  # 8 seeds: 0.910 +- 0.013 (module docstring)
  assert acc == eight_device_run[1]['knn_top1']


def test_extract_features_subset_matches_full_pass(setup):
  config, source, params, state = setup
  feats, labels = features.extract_features(
      config, source, params, state, split='test'
  )
  assert feats.shape == (297, 128) and labels.shape == (297,)
  np.testing.assert_array_equal(labels, source.labels['test'])
  sub_feats, sub_labels = features.extract_features(
      config, source, params, state, split='test', max_examples=100
  )
  idx = features.subset_indices(297, 100)
  assert len(np.unique(idx)) == 100
  np.testing.assert_array_equal(sub_labels, labels[idx])
  np.testing.assert_allclose(sub_feats, feats[idx], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    'field,value,match',
    [
        ('global_batch_size', 100, 'eval.global_batch_size=100'),
        ('test_split', 'bogus', "eval.test_split='bogus'"),
        ('num_epochs', 0, 'eval.num_epochs=0'),
    ],
)
def test_bad_eval_config_fails_at_build(field, value, match):
  with pytest.raises(plan.ConfigError, match=match):
    plan.build(tiny_inputs(**{field: value}))


def _clusters(n, dim=32, classes=10, seed=0):
  """Gaussian clusters: n features [n, dim] and labels."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n).astype(np.int32)
  centres = rng.normal(0, 1, (classes, dim))
  feats = centres[labels] + 0.8 * rng.normal(0, 1, (n, dim))
  return feats.astype(np.float32), labels


def test_sweep_chooses_the_clearly_best_rate():
  """Two classes, class signal +-1 hidden under a shared noise of std 3:
  x = (signal + noise, noise). The class means point along x1 alone (the
  first steps' direction); the separating direction is x1 - x2, found in 8
  steps at rate 0.4, not at 1e-3 or 1e-4 (under-trained). Measured over data
  and config seeds 0..7 (AMD EPYC): 0.4 gives 1.000 held-out top-1 for every
  seed, the others 0.63 +- 0.035 (0.58..0.68): 0.85 is 6 sd above. (With
  noise 10 and the paper's grid the best rate changed with the seed: 0.05 was
  best for seed 0 only.) The best rate sits mid-grid: neither "the first"
  nor "the last" passes."""
  rng = np.random.default_rng(0)
  signal = rng.integers(0, 2, 1500)
  noise = 3 * rng.normal(0, 1, 1500)
  feats = np.stack([2 * signal - 1 + noise, noise], 1).astype(np.float32)
  run = tiny_run(num_epochs=2)  # the paper's grid, the default
  assert tuple(run.config.eval.learning_rates) == (0.4, 0.3, 0.2, 0.1, 0.05)
  assert run.probe.sweep_valid_examples == 300
  assert run.probe.sweep_steps == 2 * (1200 // 256)
  run = tiny_run(num_epochs=2, learning_rates=(1e-3, 0.4, 1e-4))
  chosen, table = probe.sweep_learning_rate(
      run.config,
      dataclasses.replace(run.probe, num_classes=2),
      run.source,
      (feats, signal.astype(np.int32)),
  )
  assert chosen == 1 and list(table) == ['0.001', '0.4', '0.0001']
  assert table['0.4'] > 0.95
  assert max(v for k, v in table.items() if k != '0.4') < 0.85


def _record_probe_calls(monkeypatch) -> list:
  """Records (examples, peak rates, steps) of every train_probes call."""
  calls = []
  real = probe.train_probes

  def spy(feats, labels, peaks, **kwargs):
    calls.append((len(labels), list(peaks), kwargs['steps']))
    return real(feats, labels, peaks, **kwargs)

  monkeypatch.setattr(probe, 'train_probes', spy)
  return calls


def test_final_probe_trains_on_all_of_train_at_the_chosen_rate(
    setup, tmp_path, monkeypatch
):
  _, _, params, state = setup
  run = tiny_run(learning_rates=(0.4, 0.1), num_epochs=2)
  calls = _record_probe_calls(monkeypatch)
  results = linear_eval.run_linear_eval(run, str(tmp_path), params, state)
  sweep_call, final_call = calls
  # The sweep: both rates together on the 1200 non-held-out examples.
  assert sweep_call == (1200, [0.4, 0.1], 2 * (1200 // 256))
  chosen = results['base_learning_rate']
  assert chosen == float(max(results['sweep'], key=results['sweep'].get))
  # The final probe: all 1500 training examples, the chosen rate alone.
  assert final_call == (1500, [chosen], 2 * (1500 // 256))
  assert results['learning_rate'] == chosen  # batch 256: x 256 / 256
  assert results['sweep_valid_examples'] == 300
  on_disk = json.loads((tmp_path / workdir_lib.EVAL_RESULTS).read_text())
  assert on_disk['sweep'] == results['sweep']


def test_online_classifier_is_scored_on_the_test_split():
  feats, labels = _clusters(400, dim=16, classes=5, seed=3)
  rng = np.random.default_rng(4)
  w = rng.normal(0, 1, (16, 5)).astype(np.float32)
  b = rng.normal(0, 1, (5,)).astype(np.float32)
  params = {'encoder/x': {}, 'classifier/linear': {'w': w, 'b': b}}
  expected = np.mean(np.argmax(feats @ w + b, -1) == labels)
  got = linear_eval.online_top1(params, (feats, labels), 5)
  assert got == pytest.approx(expected, abs=1e-6)
  assert linear_eval.online_top1(params, (feats, labels), 7) is None
  assert linear_eval.online_top1({'encoder/x': {}}, (feats, labels), 5) is None


def test_sweep_uses_the_datasets_own_validation_split(
    setup, tmp_path, monkeypatch
):
  """With a validation split apart from train and test (here 200 digits held
  out of train, the test split kept), the grid's probes train on all of
  linear_train and are scored on that split, as ImageNet's train[10000:] /
  train[:10000]; without one, a fifth of train is held out (the test above)."""
  _, _, params, state = setup
  inputs = tiny_inputs(learning_rates=(0.4, 0.1), num_epochs=2)
  inputs.data.held_out_examples = 200
  run = plan.build(inputs)
  assert (run.probe.sweep_valid_split, run.probe.sweep_valid_examples) == (
      'linear_valid',
      200,
  )
  assert run.source.resolve_split('linear_valid') == 'held_out'
  assert run.source.resolve_split('test') == 'test'
  calls = _record_probe_calls(monkeypatch)
  results = linear_eval.run_linear_eval(run, str(tmp_path), params, state)
  # Both calls train on the 1300 examples left in train; steps per epoch
  # 1300 // 256 = 5.
  assert calls[0] == (1300, [0.4, 0.1], 2 * 5)
  assert calls[1] == (1300, [results['base_learning_rate']], 2 * 5)
  assert results['sweep_valid_split'] == 'linear_valid'
  assert results['sweep_valid_examples'] == 200


def test_features_come_from_the_in_memory_copy_in_few_large_batches(
    setup, monkeypatch
):
  """digits: the whole 297-image test split is one batch of 8 x 38."""
  config, source, params, state = setup
  seen = []
  original = features.pipeline.make_eval_iterator
  monkeypatch.setattr(
      features.pipeline,
      'make_eval_iterator',
      lambda *a, **k: seen.append(k) or original(*a, **k),
  )
  feats, _ = features.extract_features(
      config, source, params, state, split='test'
  )
  assert seen[-1]['global_batch_size'] == 8 * 38 and len(feats) == 297
  features.extract_features(
      config, source, params, state, split='linear_train', max_examples=1000
  )
  assert seen[-1]['global_batch_size'] == 8 * 125
  assert len(seen[-1]['indices']) == 1000
  # One copy per split on the devices: the subset reads the train split's.
  placed = {key[0] for key in source.__dict__['_placed']}
  assert placed == {'train', 'test'}
  # 32 px: 2**24 / 32**2 = 16384 images per device at most.
  assert features.feature_batch_size(32, 10_000, 1, 1) == 10_000
  assert features.feature_batch_size(32, 50_000, 1, 1) == 16_384
  assert features.feature_batch_size(224, 50_000, 8, 2) == 334 * 16
