"""The training loop's speed contract: one compilation, no per-step syncs.

A tiny GN+WS run (digits, in memory) in this process, with the pmapped
step wrapped to
  * fail on a second trace of the step's Python body (chex.assert_max_traces),
  * record every read of a device array's value on the host (the sync that
    float(loss), np.asarray(metrics) or jax.device_get cause) between two
    steps, and fail if one happens after a step that is not a logging step.
"""

import json
import pathlib
import subprocess
import sys
import types

import chex
import jax
from jax._src import array as jax_array
import numpy as np
import pytest
import xla_env

from byol_jax import experiment
from byol_jax import main as main_lib
from byol_jax.config import configs
from byol_jax.training import checkpointing
from byol_jax.training import preemption
from byol_jax.training import pretrain

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS, LOG_EVERY = 7, 3


def _config(**overrides):
  config = configs.load_experiment('gn_ws', 'tiny,batch=16')
  for key, value in {
      'training.total_steps': STEPS,
      'training.warmup_steps': 1,
      'eval.after_pretraining': False,
      'logging.knn_every_steps': 0,
      'logging.every_steps': LOG_EVERY,
      # The clock schedule on (the default), due never here;
      # the step schedule saves at step 4.
      'checkpoint.every_secs': 3600,
      'checkpoint.every_steps': 4,
      **overrides,
  }.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def test_one_compilation_and_no_host_sync_between_logging_steps(
    tmp_path, monkeypatch
):
  steps_done = []
  reads = []  # (steps done when the read happened, what was read)
  original_pmap = experiment.pmap_update
  original_value = jax_array.ArrayImpl._value

  def pmap_update(update, **kwargs):
    # Fails on a second trace: the run must compile the step once.
    stepped = original_pmap(chex.assert_max_traces(update, n=1), **kwargs)

    def step(state, batch):
      out = stepped(state, batch)
      steps_done.append(len(steps_done) + 1)
      return out

    step.lower = stepped.lower
    return step

  def value(self):
    if steps_done:
      reads.append((steps_done[-1], tuple(self.shape)))
    return original_value.fget(self)

  monkeypatch.setattr(experiment, 'pmap_update', pmap_update)
  monkeypatch.setattr(jax_array.ArrayImpl, '_value', property(value))
  summary = main_lib.run(_config(), str(tmp_path))
  monkeypatch.undo()
  assert summary['step'] == STEPS and steps_done == list(range(1, STEPS + 1))
  # Host reads only after logging steps (3, 6 and the last, 7) and the step
  # the step schedule checkpoints (4): never after steps 1, 2 or 5.
  sync_steps = {3, 4, 6, 7}
  assert {s for s, _ in reads} <= sync_steps, sorted(set(reads))
  assert {3, 6, 7} <= {s for s, _ in reads}  # the instrument does see reads.
  # A checkpoint first fetches the metrics (a non-finite loss is never
  # checkpointed), so step 4 is logged too.
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').open()]
  assert [r['step'] for r in rows] == [3, 4, 6, 7]
  assert checkpointing.Checkpointer(tmp_path / 'checkpoints').all_steps() == [
      4,
      7,
  ]


def test_the_checkpoint_clock_never_communicates(tmp_path, monkeypatch):
  """Multi-process: no exchange per step; the clock is agreed at logging."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  calls = []
  monkeypatch.setattr(
      multihost_utils,
      'broadcast_one_to_all',
      lambda *a, **k: calls.append('broadcast'),
  )
  monkeypatch.setattr(
      multihost_utils,
      'process_allgather',
      lambda *a, **k: calls.append('allgather'),
  )
  now = [0.0]
  clock = types.SimpleNamespace(monotonic=lambda: now[0])
  monkeypatch.setattr(checkpointing, 'time', clock)
  ckpt = checkpointing.Checkpointer(tmp_path, save_interval_secs=10)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  watcher = preemption.PreemptionWatcher()
  decisions = set()
  for _ in range(100):
    now[0] += 1.0
    decisions.add(preemption.decide(watcher, ckpt, sync=False))
  assert calls == []
  # The clock alone never saves on several processes (its answer must be
  # agreed): nothing at non-logging steps.
  assert ckpt.time_due() and decisions == {(False, False, 0)}


def test_two_process_decisions_use_one_allgather(monkeypatch, tmp_path):
  """At a logging step: preempt if any process got a signal; 0's clock."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  gathered = []

  def allgather(flags):
    gathered.append(np.asarray(flags).tolist())
    other = np.asarray([1, 0], np.int32)  # process 1: signal, clock not due
    return np.stack([np.asarray(flags), other])

  now = [100.0]
  clock = types.SimpleNamespace(monotonic=lambda: now[0])
  monkeypatch.setattr(checkpointing, 'time', clock)
  ckpt = checkpointing.Checkpointer(tmp_path, save_interval_secs=10)
  monkeypatch.setattr(multihost_utils, 'process_allgather', allgather)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  now[0] += 10.0
  watcher = preemption.PreemptionWatcher()
  assert preemption.decide(watcher, ckpt, sync=True) == (True, True, 1)
  assert gathered == [[0, 1]]


class _RecordingWriter:
  """Stands in for writers.MetricWriter: records what is logged."""

  def __init__(self):
    self.rows = []

  def write(self, step, metrics):
    self.rows.append((step, dict(metrics)))

  def console(self, step, metrics):
    del step, metrics


class _NoCheckpoint:
  directory = '/nowhere'

  def latest_step(self):
    return None


def _replicated(**values):
  return {k: np.full((2,), v, np.float32) for k, v in values.items()}


def test_metrics_buffer_logs_the_interval_mean_and_the_newest_schedule():
  writer = _RecordingWriter()
  buffer = pretrain._MetricsBuffer(writer, _NoCheckpoint())
  for step, (loss, lr) in enumerate([(1.0, 0.1), (2.0, 0.2), (6.0, 0.3)], 1):
    buffer.add(
        step,
        _replicated(
            loss=loss, online_top1=loss / 10, lr=lr, tau=0.99 + step / 1000
        ),
    )
  buffer.flush()
  ((step, row),) = writer.rows
  assert step == 3
  np.testing.assert_allclose(
      [row['loss'], row['online_top1'], row['lr'], row['tau']],
      [3.0, 0.3, 0.3, 0.993],
      rtol=1e-6,
  )
  assert buffer.last == row
  buffer.flush()  # nothing pending: nothing logged
  assert len(writer.rows) == 1


def test_metrics_buffer_names_the_first_non_finite_step():
  writer = _RecordingWriter()
  buffer = pretrain._MetricsBuffer(writer, _NoCheckpoint())
  for step, loss in ((7, 1.0), (8, np.nan), (9, np.inf)):
    buffer.add(step, _replicated(loss=loss, lr=0.1, tau=0.99))
  with pytest.raises(pretrain.NonFiniteLossError, match='at step 8;'):
    buffer.flush()
  assert not writer.rows


def test_metrics_buffer_counts_collapsed_rows_in_a_row():
  buffer = pretrain._MetricsBuffer(
      _RecordingWriter(), _NoCheckpoint(), collapse_below=1e-3
  )
  lows = []
  for step, std in enumerate([0.5, 1e-4, 0.0, 0.2, 0.0, 0.0, 0.0], 1):
    buffer.add(
        step,
        _replicated(loss=1.0, lr=0.1, tau=0.99, collapse_std_projection=std),
    )
    buffer.flush()
    lows.append(buffer.low)
  assert lows == [0, 1, 2, 0, 1, 2, 3]
  off = pretrain._MetricsBuffer(_RecordingWriter(), _NoCheckpoint())
  off.add(
      1, _replicated(loss=1.0, lr=0.1, tau=0.99, collapse_std_projection=0.0)
  )
  off.flush()
  assert off.low == 0  # threshold 0: the monitor is off


def _main(workdir, *overrides):
  return subprocess.run(
      [
          sys.executable,
          '-m',
          'byol_jax.main',
          '--config=experiments/gn_ws.py:tiny,batch=16,steps=6',
          f'--workdir={workdir}',
          '--config.logging.every_steps=1',
          '--config.logging.knn_every_steps=0',
          '--config.checkpoint.every_steps=0',
          '--config.checkpoint.every_secs=0',
          '--config.eval.after_pretraining=false',
          *overrides,
      ],
      cwd=REPO,
      env=xla_env.subprocess_env(1),
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_collapse_monitor_stops_in_one_line_and_keeps_the_checkpoint(tmp_path):
  """A threshold above any statistic (it is at most 1) forces the stop."""
  proc = _main(
      tmp_path,
      '--config.logging.collapse_stop_below=2',
      '--config.logging.collapse_stop_after=2',
  )
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(
      'Training stopped: the projections collapsed: collapse_std_projection '
      'was below logging.collapse_stop_below=2 for 2 logged steps in a row ('
  ), last
  assert f'at step 2); step 2 is saved in {tmp_path}/checkpoints.' in last
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').open()]
  assert [r['step'] for r in rows] == [1, 2]
  assert checkpointing.Checkpointer(tmp_path / 'checkpoints').all_steps() == [2]
  assert not (tmp_path / 'pretrain_done.json').exists()
  # As the line says: with the monitor off, the run goes on from step 2.
  proc = _main(tmp_path, '--config.logging.collapse_stop_below=0')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'at step 2' in proc.stderr  # resumed
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').open()]
  assert [r['step'] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert json.loads((tmp_path / 'pretrain_done.json').read_text())['step'] == 6
