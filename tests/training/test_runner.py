"""The experiment runner: configs, validation, NaN stop, exact resume."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import experiment
from byol_jax import main as main_lib
from byol_jax.config import configs
from byol_jax.config import plan
from byol_jax.training import checkpointing
from byol_jax.training import pretrain

REPO = pathlib.Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(p.stem for p in (REPO / 'experiments').glob('*.py'))
PRETRAIN_CONFIGS = [e for e in EXPERIMENTS if e != 'linear_eval']
# The tiny preset at a quarter of its batch (256): these tests check the
# runner's mechanics over a few steps, not what a tiny run learns.
QUICK = 'tiny,batch=64'


def load_config(name, arg='tiny', **overrides):
  config = configs.load_experiment(name, arg)
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def _quick(name, arg=QUICK, steps=2, **overrides):
  overrides = {
      'training.total_steps': steps,
      'training.warmup_steps': 0,
      'eval.after_pretraining': False,
      'logging.knn_every_steps': 0,
      'logging.every_steps': 1,
      **overrides,
  }
  return load_config(name, arg, **overrides)


def test_every_experiment_has_a_launch_command_and_paper_number():
  assert set(EXPERIMENTS) >= {
      'byol_bn',
      'no_bn',
      'modified_init',
      'gn_ws',
      'ablation',
      'simclr',
      'linear_eval',
      'quickstart',
  }
  for name in EXPERIMENTS:
    doc = (REPO / 'experiments' / f'{name}.py').read_text()
    assert f'--config=experiments/{name}.py' in doc, name
  expected = {
      'byol_bn': 74.3,
      'no_bn': 0.1,
      'modified_init': 65.7,
      'gn_ws': 73.9,
  }
  for name, top1 in expected.items():
    config = load_config(name, '')
    assert config.paper_top1 == top1
    assert config.model.depth == 50 and config.data.image_size == 224
  gn = load_config('gn_ws', '')
  assert (
      gn.training.base_learning_rate,
      gn.training.weight_decay,
      gn.training.base_ema,
      gn.model.gn_groups,
  ) == (0.24, 3e-8, 0.999, 16)
  assert gn.model.encoder_ws and gn.model.encoder_norm == 'gn'
  # Official presets by epoch count, and steps derived from epochs.
  bn300 = load_config('byol_bn', 'epochs=300')
  assert (bn300.training.base_learning_rate, bn300.training.base_ema) == (
      0.3,
      0.99,
  )
  built = plan.build(bn300, topology=plan.Topology(1, 1), read_data=False)
  assert built.pretrain.total_steps == 300 * 1_281_167 // 4096
  assert load_config('modified_init', '').training.warmup_epochs == 50


@pytest.mark.parametrize('name', PRETRAIN_CONFIGS)
def test_every_config_runs_tiny_pretraining(name, tmp_path):
  config = _quick(name)
  summary = main_lib.run(config, str(tmp_path))
  assert summary['step'] == 2 and not summary['preempted']
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').open()]
  assert [r['step'] for r in rows] == [1, 2]
  for row in rows:
    assert np.isfinite(row['loss'])
    assert 0.0 <= row['collapse_std_projection'] <= 1.5
  assert checkpointing.Checkpointer(tmp_path / 'checkpoints').all_steps() == [2]
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['training']['total_steps'] == 2


def test_ablation_options_select_the_norms():
  config = load_config(
      'ablation', 'encoder=bn,projector=ln,predictor=none,' 'method=simclr'
  )
  assert (
      config.model.encoder_norm,
      config.model.projector_norm,
      config.model.predictor_norm,
      config.method,
  ) == ('bn', 'ln', 'none', 'simclr')
  with pytest.raises(ValueError, match="encoder='bogus'"):
    load_config('ablation', 'encoder=bogus')
  with pytest.raises(ValueError, match="unknown config option 'colour'"):
    load_config('gn_ws', 'tiny,colour=red')


@pytest.mark.parametrize(
    'field,value,message',
    [
        (
            'training.global_batch_size',
            60,
            r'training.global_batch_size=60: must '
            r'be a positive multiple of the 8 devices \(1 host',
        ),
        ('model.encoder_norm', 'batchnorm', "model.encoder_norm='batchnorm'"),
        ('model.depth', 42, 'model.depth=42'),
        (
            'model.gn_groups',
            24,
            r'not divisible by the 24 GroupNorm groups '
            r'\(model.gn_groups=24\)',
        ),
    ],
)
def test_validation_names_the_field(field, value, message):
  config = load_config('gn_ws', 'tiny')
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(plan.ConfigError, match=message):
    plan.build(config, topology=plan.Topology(1, 8), read_data=False)


def test_missing_dataset_is_a_config_error(tmp_path):
  config = load_config('gn_ws', 'tiny,dataset=folder:' + str(tmp_path / 'no'))
  with pytest.raises(plan.ConfigError, match='data.source'):
    plan.build(config)


def _nan_from_step(nan_step):
  def lr_fn(training, plan):
    good = experiment_learning_rate_fn(training, plan)
    return lambda step: jnp.where(step >= nan_step, jnp.nan, good(step))

  return lr_fn


experiment_learning_rate_fn = experiment.learning_rate_fn


@pytest.mark.parametrize(
    'every_steps,message',
    [
        # Checkpoint every step: the update of step 4 (lr NaN) poisons the
        # weights, and saving them is refused.
        (1, 'state became non-finite at step 4'),
        # No checkpoint in between: step 5's loss is the first NaN.
        (100, 'loss became nan at step 5'),
    ],
)
def test_non_finite_loss_stops_naming_the_step_and_keeps_last_checkpoint(
    tmp_path, monkeypatch, every_steps, message
):
  # Stopped at step 2 of an 8-step run (max_steps), then resumed.
  main_lib.run(
      _quick('gn_ws', steps=8, **{'training.max_steps': 2}), str(tmp_path)
  )
  monkeypatch.setattr(experiment, 'learning_rate_fn', _nan_from_step(3))
  config = _quick('gn_ws', steps=8, **{'checkpoint.every_steps': every_steps})
  with pytest.raises(pretrain.NonFiniteLossError, match=message):
    main_lib.run(config, str(tmp_path))
  kept = checkpointing.Checkpointer(tmp_path / 'checkpoints').all_steps()
  assert kept == ([2, 3] if every_steps == 1 else [2])
  _, state = _final_state(tmp_path)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


def _launch(workdir, steps):
  cmd = [
      sys.executable,
      '-m',
      'byol_jax.main',
      f'--config=experiments/gn_ws.py:{QUICK}',
      f'--workdir={workdir}',
      f'--config.training.total_steps={steps}',
      '--config.training.warmup_steps=2',
      '--config.eval.after_pretraining=False',
      '--config.logging.knn_every_steps=0',
      '--config.logging.every_steps=1',
      '--config.checkpoint.every_steps=1',
  ]
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  return subprocess.Popen(
      cmd,
      cwd=REPO,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
  )


def _wait_for_step(workdir, step, proc, timeout=300):
  deadline = time.time() + timeout
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  while time.time() < deadline:
    if path.exists():
      rows = [l for l in path.read_text().splitlines() if l.strip()]
      if rows and json.loads(rows[-1])['step'] >= step:
        return
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.05)
  raise TimeoutError(f'step {step} not reached')


def _final_state(workdir):
  config = plan.build(load_config('gn_ws', 'tiny')).config
  restored = checkpointing.Checkpointer(
      pathlib.Path(workdir) / 'checkpoints'
  ).restore_latest(experiment.state_template(config, 10))
  return restored.step, restored.state


def test_exact_resume_after_sigterm_and_sigkill(tmp_path):
  """Preempted (SIGTERM), then killed (SIGKILL), then resumed: bit-identical.

  The digits are on the in-memory path: crops made on the devices.
  """
  steps = 12
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  proc = _launch(straight, steps)
  assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]

  proc = _launch(resumed, steps)
  _wait_for_step(resumed, 3, proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0  # a clean, checkpointed exit.
  stopped_at, _ = _final_state(resumed)
  assert 3 <= stopped_at < steps

  proc = _launch(resumed, steps)
  _wait_for_step(resumed, stopped_at + 3, proc)
  proc.kill()  # SIGKILL: no chance to clean up.
  proc.wait(timeout=60)
  killed_at, _ = _final_state(resumed)  # the latest checkpoint restores.
  assert stopped_at < killed_at < steps

  proc = _launch(resumed, steps)
  assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
  for workdir in (straight, resumed):
    saved = json.loads((workdir / 'config.json').read_text())
    assert saved['derived']['data_path'] == 'in_memory'
  step_a, a = _final_state(straight)
  step_b, b = _final_state(resumed)
  assert step_a == step_b == steps
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  rows = [json.loads(l) for l in (resumed / 'metrics.jsonl').open()]
  assert [r['step'] for r in rows] == list(range(1, steps + 1))
