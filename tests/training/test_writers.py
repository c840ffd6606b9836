"""Tests for byol_jax/training/writers.py."""

import builtins
import json
import logging as std_logging
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax.training import writers

REPO = pathlib.Path(__file__).resolve().parents[2]


def _writer(workdir, **kwargs):
  return writers.MetricWriter(
      workdir, total_steps=1000, images_per_step=256, **kwargs
  )


def _console(w, step, metrics, caplog):
  """The progress line w.console logs."""
  caplog.clear()
  with caplog.at_level(std_logging.INFO):
    w.console(step, metrics)
  return caplog.records[-1].getMessage() if caplog.records else None


def test_jsonl_rows_parse_back_exactly(tmp_path):
  w = _writer(tmp_path)
  w.write(0, {'loss': 1.5, 'lr': np.float32(0.25)})
  w.write(
      np.int64(10), {'loss': jnp.asarray(0.125), 'acc': np.array([0.5]), 'n': 3}
  )
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(l) for l in lines] == [
      {'step': 0, 'loss': 1.5, 'lr': 0.25},
      {'step': 10, 'loss': 0.125, 'acc': 0.5, 'n': 3.0},
  ]
  assert isinstance(json.loads(lines[1])['step'], int)
  assert writers.read_metrics(tmp_path) == [json.loads(l) for l in lines]


def test_write_rejects_non_scalar_and_step_key(tmp_path):
  w = _writer(tmp_path)
  with pytest.raises(ValueError, match="'loss' has shape"):
    w.write(1, {'loss': np.ones(8)})
  with pytest.raises(ValueError, match="'step'"):
    w.write(1, {'step': 3})
  assert writers.read_metrics(tmp_path) == []


def test_non_chief_writes_nothing(tmp_path, caplog):
  workdir = tmp_path / 'run'
  w = _writer(workdir, is_chief=False)
  w.write(1, {'loss': 1.0})
  assert _console(w, 1, {'loss': 1.0}, caplog) is None
  w.truncate_after(0)
  w.close()
  assert not workdir.exists()


def test_truncate_after_drops_later_rows_and_partial_line(tmp_path, caplog):
  w = _writer(tmp_path)
  for step in range(0, 50, 10):
    w.write(step, {'loss': float(step)})
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 50, "lo')  # A process killed mid-write.
  assert [r['step'] for r in writers.read_metrics(tmp_path)] == [
      0,
      10,
      20,
      30,
      40,
  ]
  with caplog.at_level(std_logging.INFO):
    w.truncate_after(20)
  assert 'Dropped 2 rows after step 20' in caplog.text
  w.write(30, {'loss': -1.0})  # The resumed run logs step 30 again.
  rows = writers.read_metrics(tmp_path)
  assert [(r['step'], r['loss']) for r in rows] == [
      (0, 0.0),
      (10, 10.0),
      (20, 20.0),
      (30, -1.0),
  ]


def test_read_metrics_rejects_corrupt_middle_line(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text(
      '{"step": 1}\nnot json\n{"step": 2}\n'
  )
  with pytest.raises(ValueError, match='metrics.jsonl:2'):
    writers.read_metrics(tmp_path)
  assert writers.read_metrics(tmp_path / 'absent') == []


def _read_scalars(logdir):
  """(tag, step, value) of every scalar TensorBoard's own reader finds."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top

  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  return [
      (tag, e.step, e.value)
      for tag in sorted(acc.Tags()['scalars'])
      for e in acc.Scalars(tag)
  ]


def test_tensorboard_event_file_holds_scalars(tmp_path):
  pytest.importorskip('tensorboard')
  w = _writer(tmp_path)
  w.write(3, {'loss': 0.5, 'lr': np.float32(0.125)})
  w.write(4, {'loss': 0.25})
  w.close()
  assert len(list(tmp_path.glob('events.out.tfevents.*'))) == 1
  assert _read_scalars(tmp_path) == [
      ('loss', 3, 0.5),
      ('loss', 4, 0.25),
      ('lr', 3, 0.125),
  ]


_WITHOUT_TF = """
import sys
sys.modules['tensorflow'] = None
from byol_jax.training import writers
w = writers.MetricWriter(sys.argv[1], total_steps=2, images_per_step=1)
w.write(1, {'loss': 0.75})
w.write(2, {'loss': 0.5, 'acc': 0.25})
w.close()
assert 'tensorflow' not in {m.split('.')[0] for m, v in sys.modules.items()
                            if v is not None}
"""


def test_tensorboard_scalars_without_tensorflow(tmp_path):
  """sys.modules['tensorflow'] = None: events still written and readable."""
  pytest.importorskip('tensorboard')
  proc = subprocess.run(
      [sys.executable, '-c', _WITHOUT_TF, str(tmp_path)],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'TensorBoard logging disabled' not in proc.stderr
  assert _read_scalars(tmp_path) == [
      ('acc', 2, 0.25),
      ('loss', 1, 0.75),
      ('loss', 2, 0.5),
  ]
  assert [r['step'] for r in writers.read_metrics(tmp_path)] == [1, 2]


def test_missing_tensorboard_warns_once_and_keeps_jsonl(
    tmp_path, monkeypatch, caplog
):
  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name == 'tensorboard' or name.startswith('tensorboard.'):
      raise ImportError('No module named tensorboard')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', fake_import)
  w = _writer(tmp_path)
  with caplog.at_level(std_logging.WARNING):
    w.write(1, {'loss': 1.0})
    w.write(2, {'loss': 0.5})
  warnings = [r for r in caplog.records if 'TensorBoard' in r.getMessage()]
  assert len(warnings) == 1
  assert [r['step'] for r in writers.read_metrics(tmp_path)] == [1, 2]
  assert not list(tmp_path.glob('events.out.tfevents.*'))


def test_console_images_per_second_and_eta_on_fake_clock(
    tmp_path, monkeypatch, caplog
):
  now = [1000.0]
  monkeypatch.setattr(writers.time, 'monotonic', lambda: now[0])
  w = _writer(tmp_path)
  first = _console(
      w,
      100,
      {'loss': 0.123456, 'lr': 0.2, 'tau': 0.99612, 'other': 5.0},
      caplog,
  )
  assert first == (
      'step 100/1000 (10.0%) | loss 0.1235 | lr 2.00e-01 | '
      'tau 0.99612 | -- img/s | ETA --'
  )
  now[0] += 20.0  # 100 steps in 20 s: 5 steps/s, 1280 img/s.
  second = _console(w, 200, {'loss': 0.5}, caplog)
  # 800 steps left at 0.2 s/step = 160 s.
  assert second == (
      'step 200/1000 (20.0%) | loss 0.5000 | 1280.0 img/s | ' 'ETA 2m40s'
  )
  now[0] += 7200.0  # Slows down: 100 steps in 2 h, 700 left -> 14 h.
  third = _console(w, 300, {}, caplog)
  assert third.endswith('| 3.6 img/s | ETA 14h00m'), third
