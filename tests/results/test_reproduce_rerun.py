"""reproduce never reports an old result under new inputs.

One tiny Table 2 variant (BN, 8 px digits, batch 64, a one-rate probe of one
epoch), driven as `python -m byol_jax.reproduce --table=2 --scale=tiny
--variants=bn --override=...` drives it: trained for 4 steps; rerun
unchanged (skipped, no file touched); rerun at 6 steps (the old run moved to
WORKDIR/replaced/bn.1 untouched, the variant trained again, the table shows
the new run); rerun with only an eval.* field changed (evaluated again,
pre-training kept).
"""

import hashlib
import json
import logging
import os
import pathlib

from etils import epath
import pytest

from byol_jax.results import reproduce
from byol_jax.results import variants
from byol_jax.training import workdir as workdir_lib

OVERRIDES = (
    'data.image_size=8',
    'training.global_batch_size=64',
    'eval.global_batch_size=64',
    'eval.learning_rates=0.1',
    'eval.num_epochs=1',
    'logging.knn_every_steps=0',
    'logging.every_steps=2',
)


def _reproduce(root, steps, *extra):
  overrides = variants.parse_overrides(
      OVERRIDES + (f'training.total_steps={steps}',) + extra
  )
  return reproduce.reproduce(
      2, 'tiny', root, variants=['bn'], overrides=overrides
  )


def _sha256s(directory: pathlib.Path) -> dict:
  return {
      str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
      for p in sorted(directory.rglob('*'))
      if p.is_file()
  }


def _json(path):
  return json.loads(path.read_text())


def _row(root):
  """The table's bn row, and the linear top-1 cell eval_results.json gives."""
  (row,) = [
      l
      for l in (root / 'table2.md').read_text().splitlines()
      if l.startswith('| bn |')
  ]
  top1 = _json(root / 'bn' / 'eval_results.json')['top1']
  return row, f'| {100 * top1:.1f} |'


def test_changed_inputs_train_the_variant_again(tmp_path, caplog):
  bn = tmp_path / 'bn'
  out = _reproduce(tmp_path, 4)
  assert out['ran'] == ['bn'] and not out['replaced']
  assert _json(bn / 'pretrain_done.json')['step'] == 4
  first = _sha256s(bn)

  # Unchanged: skipped, nothing in the variant's directory changes.
  out = _reproduce(tmp_path, 4)
  assert (out['ran'], out['skipped'], out['replaced']) == ([], ['bn'], {})
  assert _sha256s(bn) == first

  # Another step count: the old run is moved aside as it was, the variant
  # trains again, and the table is the new run's.
  with caplog.at_level(logging.WARNING):
    out = _reproduce(tmp_path, 6)
  aside = tmp_path / 'replaced' / 'bn.1'
  assert out['ran'] == ['bn'] and out['replaced'] == {'bn': str(aside)}
  assert _sha256s(aside) == first
  assert _json(bn / 'pretrain_done.json')['step'] == 6
  row, top1 = _row(tmp_path)
  assert '| 6/6 |' in row and top1 in row, row
  lines = [
      r.getMessage()
      for r in caplog.records
      if 'training.total_steps 4 -> 6' in r.getMessage()
  ]
  assert len(lines) == 1 and str(aside) in lines[0], lines
  assert 'eval.' not in lines[0]  # only the changed field is named.

  # Only an evaluation input changed: evaluated again, pre-training kept.
  second = _sha256s(bn)
  out = _reproduce(tmp_path, 6, 'eval.num_epochs=2')
  assert out['ran'] == ['bn'] and not out['replaced']
  third = _sha256s(bn)
  kept = [
      k
      for k in second
      if k.startswith('checkpoints/')
      or k in ('pretrain_done.json', 'metrics.jsonl')
  ]
  assert kept and all(third[k] == second[k] for k in kept)
  assert third['eval_results.json'] != second['eval_results.json']
  results = _json(bn / 'eval_results.json')
  assert results['eval_inputs']['eval.num_epochs'] == 2
  row, top1 = _row(tmp_path)
  assert '| 6/6 |' in row and top1 in row, row
  assert sorted(p.name for p in (tmp_path / 'replaced').iterdir()) == ['bn.1']


def test_a_variant_in_training_is_not_moved_aside(tmp_path):
  """The rerun's move takes the variant's training lock first."""
  vdir = tmp_path / 'bn'
  vdir.mkdir()
  training = workdir_lib.TrainingLock(vdir)  # a run writing it holds it
  training.acquire()
  with pytest.raises(workdir_lib.WorkdirError, match=f'pid {os.getpid()}'):
    reproduce._move_aside(epath.Path(tmp_path), epath.Path(vdir))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['bn', 'replaced']
  assert sorted(p.name for p in vdir.iterdir()) == ['training.lock']
  training.release()  # the training ended: the move goes through, lock-free
  aside = reproduce._move_aside(epath.Path(tmp_path), epath.Path(vdir))
  assert not vdir.exists() and sorted(p.name for p in aside.iterdir()) == []


def test_an_override_of_the_pretrained_workdir_is_refused(tmp_path):
  with pytest.raises(
      ValueError,
      match='eval.pretrain_workdir: reproduce '
      'pre-trains every variant itself',
  ):
    reproduce.reproduce(
        2,
        'tiny',
        tmp_path,
        variants=['bn'],
        overrides=[('eval.pretrain_workdir', str(tmp_path / 'other'))],
    )
  assert not list(tmp_path.iterdir())


def test_a_variant_another_run_writes_stops_reproduce(tmp_path, monkeypatch):
  """Not recorded as a failed variant: the other run is still writing it."""

  def busy(variant, config, vdir):
    raise workdir_lib.WorkdirError(f'--workdir={vdir} is in use')

  monkeypatch.setattr(reproduce, 'run_variant', busy)
  with pytest.raises(workdir_lib.WorkdirError, match='is in use'):
    reproduce.reproduce(2, 'tiny', tmp_path, variants=['bn'])
  assert not (tmp_path / reproduce.FAILURES_FILE).exists()
