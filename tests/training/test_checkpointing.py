"""Tests for byol_jax/training/checkpointing.py."""

import logging as std_logging
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types
from typing import NamedTuple

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax.training import checkpointing

REPO = pathlib.Path(__file__).resolve().parents[2]


class State(NamedTuple):
  step: jnp.ndarray
  params: dict
  opt_state: dict
  rng: jnp.ndarray


def make_state(seed: int, size: int = 8) -> State:
  rng = np.random.RandomState(seed)
  return State(
      step=np.int32(seed),
      params={
          'conv': {
              'w': rng.randn(3, 3, 2, size).astype(np.float32),
              'b': rng.randn(size).astype(jnp.bfloat16),
          },
          'head': {'w': jnp.asarray(rng.randn(size, 4), jnp.float32)},
      },
      opt_state={
          'count': np.asarray(seed * 10, np.int32),
          'mu': {'w': rng.randn(size, 4).astype(np.float32)},
      },
      rng=np.asarray(jax.random.key_data(jax.random.PRNGKey(seed))),
  )


def abstract(state):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state
  )


def assert_identical(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    g, w = np.asarray(g), np.asarray(w)
    assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_array_equal(g, w)


def test_round_trip_is_bit_identical(tmp_path):
  state = make_state(3)
  assert state.rng.dtype == np.uint32
  ckpt = checkpointing.Checkpointer(tmp_path / 'ckpt')
  assert ckpt.restore_latest(abstract(state)) is None
  assert ckpt.latest_step() is None
  extra = {
      'data_position': np.int64(1234),
      'config_hash': 'abc',
      'metrics': {'loss': np.float32(0.5)},
  }
  assert ckpt.save(3, state, extra)
  ckpt.close()

  ckpt = checkpointing.Checkpointer(tmp_path / 'ckpt')  # A fresh process.
  step, restored, got_extra = ckpt.restore_latest(abstract(state))
  assert step == 3 and ckpt.latest_step() == 3
  assert isinstance(restored, State)
  assert_identical(restored, state)
  assert restored.params['conv']['b'].dtype == jnp.bfloat16
  assert got_extra == {
      'data_position': 1234,
      'config_hash': 'abc',
      'metrics': {'loss': 0.5},
  }
  # A template of arrays (not ShapeDtypeStructs) works too; jax leaves come
  # back as jax arrays.
  _, again, _ = ckpt.restore_latest(make_state(0))
  assert_identical(again, state)
  assert isinstance(again.params['head']['w'], jax.Array)


def test_relative_directory_restores(tmp_path, monkeypatch):
  # `--workdir=runs/x`: orbax restores only from absolute paths, so a relative
  # directory used to save fine and then fail to resume.
  monkeypatch.chdir(tmp_path)
  state = make_state(5)
  checkpointing.Checkpointer('runs/x/checkpoints').save(4, state)
  ckpt = checkpointing.Checkpointer(pathlib.Path('runs/x/checkpoints'))
  assert ckpt.directory == tmp_path / 'runs/x/checkpoints'
  restored = ckpt.restore_latest(abstract(state))
  assert restored.step == 4
  assert_identical(restored.state, state)


def test_relative_directory_without_epath_absolute(tmp_path, monkeypatch):
  # The last etils release for Python 3.10 has no Path.absolute().
  from etils.epath import abstract_path  # pylint: disable=g-import-not-at-top

  monkeypatch.delattr(abstract_path.Path, 'absolute')
  monkeypatch.chdir(tmp_path)
  ckpt = checkpointing.Checkpointer('runs/y/checkpoints')
  assert ckpt.directory == tmp_path / 'runs/y/checkpoints'
  assert isinstance(ckpt.directory, epath.Path)


def test_optax_state_round_trip_from_eval_shape_template(tmp_path):
  optax = pytest.importorskip('optax')
  params = {'w': jnp.full((3, 2), 0.5), 'b': jnp.zeros(2)}
  opt = optax.chain(
      optax.add_decayed_weights(1e-4, mask={'w': True, 'b': False}),
      optax.sgd(0.1, momentum=0.9),
      optax.scale_by_schedule(lambda s: 1.0),
  )
  opt_state = opt.init(params)
  _, opt_state = opt.update(
      jax.tree.map(jnp.ones_like, params), opt_state, params
  )
  state = jax.device_get((params, opt_state))  # EmptyState / MaskedState nodes.
  ckpt = checkpointing.Checkpointer(tmp_path)
  ckpt.save(1, state)
  template = jax.eval_shape(lambda: (params, opt.init(params)))
  restored = ckpt.restore_latest(template).state
  assert_identical(restored, state)
  assert int(restored[1][-1].count) == 1


def test_shape_mismatch_is_a_clear_error(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path)
  ckpt.save(1, make_state(1, size=8))
  with pytest.raises(ValueError, match='conv/b has shape'):
    ckpt.restore_latest(abstract(make_state(0, size=16)))


def test_max_to_keep(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path, max_to_keep=2)
  for step in (1, 2, 3, 4):
    ckpt.save(step, make_state(step))
  assert ckpt.all_steps() == [3, 4]
  assert sorted(p.name for p in tmp_path.iterdir()) == ['3', '4']
  # Saving a step that exists is skipped, not an error (preemption right after
  # a scheduled save).
  assert not ckpt.save(4, make_state(99))
  assert_identical(
      ckpt.restore_latest(abstract(make_state(0))).state, make_state(4)
  )


def test_a_new_step_is_saved_once(tmp_path):
  """When to save is the loop's (checkpoint.every_steps, the agreed clock)."""
  ckpt = checkpointing.Checkpointer(tmp_path)
  assert ckpt.save(10, make_state(10))
  assert not ckpt.save(10, make_state(11))  # Already saved.
  assert ckpt.all_steps() == [10]
  assert_identical(
      ckpt.restore_latest(abstract(make_state(0))).state, make_state(10)
  )


def test_time_schedule(tmp_path, monkeypatch):
  now = [100.0]
  clock = types.SimpleNamespace(monotonic=lambda: now[0])
  monkeypatch.setattr(checkpointing, 'time', clock)
  ckpt = checkpointing.Checkpointer(tmp_path, save_interval_secs=60)
  assert not ckpt.time_due()
  now[0] += 59.0
  assert not ckpt.time_due()
  now[0] += 1.0
  assert ckpt.time_due()
  assert ckpt.save(3, make_state(3))
  assert not ckpt.time_due()  # The clock restarts at each save.
  now[0] += 60.0
  assert ckpt.time_due()
  assert ckpt.all_steps() == [3]


def test_no_clock_is_never_due(tmp_path, monkeypatch):
  now = [100.0]
  clock = types.SimpleNamespace(monotonic=lambda: now[0])
  monkeypatch.setattr(checkpointing, 'time', clock)
  ckpt = checkpointing.Checkpointer(tmp_path)
  now[0] += 1e9
  assert not ckpt.time_due()


def test_non_finite_state_is_refused(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path, max_to_keep=1)
  ckpt.save(1, make_state(1), {'data_position': 1})
  bad = make_state(2)
  bad.params['conv']['b'][3] = np.nan  # A bfloat16 leaf.
  with pytest.raises(checkpointing.NonFiniteStateError, match='params/conv/b'):
    ckpt.save(2, bad)
  bad = make_state(2)
  bad.opt_state['mu']['w'][0, 0] = np.inf
  with pytest.raises(checkpointing.NonFiniteStateError, match='mu/w'):
    ckpt.save(2, bad)
  # max_to_keep=1 would have deleted step 1: it must still be there, intact.
  assert ckpt.all_steps() == [1]
  step, state, extra = ckpt.restore_latest(abstract(make_state(0)))
  assert step == 1 and extra == {'data_position': 1}
  assert_identical(state, make_state(1))


# A failed orbax read can leave tensorstore callbacks that fire on orbax's
# already-closed asyncio loop ("Event loop is closed"): harmless noise.
_IGNORE_CLOSED_LOOP = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning'
)


def _damage_largest_data_file(step_dir: pathlib.Path, how: str) -> None:
  files = [p for p in (step_dir / 'state').rglob('*') if p.is_file()]
  target = max(files, key=lambda p: p.stat().st_size)
  assert target.stat().st_size > 1000  # The array data, not metadata.
  if how == 'delete':
    target.unlink()
  else:
    with open(target, 'r+b') as f:
      f.truncate(target.stat().st_size // 2)


@_IGNORE_CLOSED_LOOP
@pytest.mark.parametrize('how', ['delete', 'truncate'])
def test_corrupt_latest_falls_back_to_previous(tmp_path, how, caplog):
  ckpt = checkpointing.Checkpointer(tmp_path, max_to_keep=3)
  for step in (1, 2):
    ckpt.save(step, make_state(step, size=64), {'at': step})
  _damage_largest_data_file(tmp_path / '2', how)
  fresh = checkpointing.Checkpointer(tmp_path)
  with caplog.at_level(std_logging.WARNING):
    step, state, extra = fresh.restore_latest(abstract(make_state(0, size=64)))
  assert step == 1 and extra == {'at': 1}
  assert_identical(state, make_state(1, size=64))
  warned = [
      r.getMessage() for r in caplog.records if r.levelno >= std_logging.WARNING
  ]
  assert any(str(tmp_path / '2') in m and 'unreadable' in m for m in warned)
  # The corrupt step is moved aside, so training can save step 2 again.
  assert fresh.all_steps() == [1]
  assert (tmp_path / '2.corrupt').is_dir()
  assert fresh.save(2, make_state(22, size=64))
  assert fresh.restore_latest(abstract(make_state(0, size=64))).step == 2


@_IGNORE_CLOSED_LOOP
def test_all_corrupt_is_a_clear_error(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path)
  for step in (1, 2):
    ckpt.save(step, make_state(step, size=64))
  for step in (1, 2):
    _damage_largest_data_file(tmp_path / str(step), 'delete')
  with pytest.raises(
      checkpointing.CheckpointRestoreError,
      match=f'{tmp_path}.*steps \\[1, 2\\].*none could',
  ):
    checkpointing.Checkpointer(tmp_path).restore_latest(
        abstract(make_state(0, size=64))
    )
  # Nothing is moved aside when nothing could be restored.
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [1, 2]


def _listing(directory: pathlib.Path) -> dict:
  """Every path under directory with its size and mtime."""
  return {
      str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
      for p in sorted(directory.rglob('*'))
  }


@_IGNORE_CLOSED_LOOP
def test_read_only_skips_a_corrupt_latest_and_touches_nothing(tmp_path, caplog):
  """A reader of a run that may be training: no rename, no cleanup."""
  ckpt = checkpointing.Checkpointer(tmp_path, max_to_keep=3)
  for step in (1, 2):
    ckpt.save(step, make_state(step, size=64), {'at': step})
  ckpt.close()
  _damage_largest_data_file(tmp_path / '2', 'truncate')
  # A save in progress (the writer's), which a writer's manager would delete.
  in_progress = tmp_path / '3.orbax-checkpoint-tmp-1234'
  (in_progress / 'state').mkdir(parents=True)
  (in_progress / 'state' / 'data').write_bytes(b'x' * 100)
  before = _listing(tmp_path)
  reader = checkpointing.Checkpointer(tmp_path, read_only=True)
  with caplog.at_level(std_logging.WARNING):
    step, state, extra = reader.restore_latest(abstract(make_state(0, 64)))
  assert step == 1 and extra == {'at': 1}
  assert_identical(state, make_state(1, size=64))
  assert any(
      str(tmp_path / '2') in r.getMessage() and 'unreadable' in r.getMessage()
      for r in caplog.records
  )
  with pytest.raises(ValueError, match='read_only'):
    reader.save(4, make_state(4))
  reader.close()
  assert _listing(tmp_path) == before
  # A missing directory is not created.
  assert (
      checkpointing.Checkpointer(
          tmp_path / 'none', read_only=True
      ).latest_step()
      is None
  )
  assert not (tmp_path / 'none').exists()


@_IGNORE_CLOSED_LOOP
def test_read_only_rereads_the_steps_when_one_is_rotated_out(
    tmp_path, monkeypatch
):
  """A step deleted by its writer mid-read is not corrupt: the newer is read."""
  ckpt = checkpointing.Checkpointer(tmp_path, max_to_keep=2)
  for step in (1, 2):
    ckpt.save(step, make_state(step))
  reader = checkpointing.Checkpointer(tmp_path, read_only=True)
  restore = reader._manager.restore

  def rotate_during_read(step, **kwargs):
    if step == 2 and not (tmp_path / '3').exists():  # the writer moves on
      ckpt.save(3, make_state(3))
      ckpt.save(4, make_state(4))  # deletes 2
      raise FileNotFoundError(tmp_path / '2')
    return restore(step, **kwargs)

  monkeypatch.setattr(reader._manager, 'restore', rotate_during_read)
  restored = reader.restore_latest(abstract(make_state(0)))
  assert restored.step == 4
  assert_identical(restored.state, make_state(4))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['3', '4']


def test_async_save_returns_then_close_commits(tmp_path):
  """async_save: checks before returning, files committed by wait/close."""
  ckpt = checkpointing.Checkpointer(tmp_path, max_to_keep=1, async_save=True)
  big = {'w': np.random.RandomState(0).randn(512, 1024).astype(np.float32)}
  assert ckpt.save(1, big, {'at': 1})
  big['w'][:] = 0.0  # The caller may reuse its buffers: the copy was taken.
  bad = {'w': np.full((512, 1024), np.nan, np.float32)}
  with pytest.raises(checkpointing.NonFiniteStateError):
    ckpt.save(2, bad)  # refused at once, nothing written.
  assert ckpt.save(3, make_state(3))
  ckpt.close()
  # max_to_keep=1: only the last committed step remains, and it is whole.
  steps = checkpointing.Checkpointer(tmp_path).all_steps()
  assert steps == [3]
  template = abstract(make_state(0))
  assert_identical(
      checkpointing.Checkpointer(tmp_path).restore_latest(template).state,
      make_state(3),
  )


def test_async_save_of_step_1_is_the_saved_values(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path, async_save=True)
  state = make_state(5)
  ckpt.save(5, state)
  state.params['conv']['w'][:] = 7.0  # mutated after save returned.
  ckpt.wait()
  assert_identical(
      checkpointing.Checkpointer(tmp_path)
      .restore_latest(abstract(make_state(0)))
      .state,
      make_state(5),
  )


_SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from byol_jax.training import checkpointing

    def state(step):  # ~1 MB, a deterministic function of the step.
      rng = np.random.RandomState(step)
      return {'w': rng.randn(256, 1024).astype(np.float32),
              'step': np.asarray(step, np.int32)}

    ckpt = checkpointing.Checkpointer(sys.argv[1], max_to_keep=2,
                                      async_save=sys.argv[2] == 'async')
    step = (ckpt.latest_step() or 0) + 1
    while True:
      ckpt.save(step, state(step), {'step': step})
      print(step, flush=True)
      step += 1
""")


@pytest.mark.parametrize('mode', ['sync', 'async'])
def test_sigkill_during_save_never_leaves_a_bad_checkpoint(tmp_path, mode):
  script = tmp_path / 'saver.py'
  script.write_text(_SAVER)
  directory = tmp_path / 'ckpt'
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  template = {
      'w': jax.ShapeDtypeStruct((256, 1024), np.float32),
      'step': jax.ShapeDtypeStruct((), np.int32),
  }
  rand = random.Random(0)
  last_restored = 0
  leftovers = 0
  kills = 4
  for _ in range(kills):
    proc = subprocess.Popen(
        [sys.executable, str(script), str(directory), mode],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
      assert proc.stdout.readline().strip(), 'the saver died before saving'
      if mode == 'async':  # save(n + 1) starts once save(n) is committed.
        assert proc.stdout.readline().strip(), 'the saver died'
      time.sleep(rand.uniform(0.0, 0.4))  # Lands mid-save most of the time.
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
    leftovers += sum('tmp' in p.name for p in directory.iterdir())
    ckpt = checkpointing.Checkpointer(directory)
    step, state, extra = ckpt.restore_latest(template)
    # Async: the printed step may still be in flight when killed, so the
    # latest committed one may be the previous run's.
    assert (
        step > last_restored
        if mode == 'sync'
        else step >= max(last_restored, 1)
    ) and extra == {'step': step}
    rng = np.random.RandomState(step)
    np.testing.assert_array_equal(
        state['w'], rng.randn(256, 1024).astype(np.float32)
    )
    assert int(state['step']) == step
    last_restored = step
  print(f'killed {kills} times; {leftovers} half-written step dirs ignored')
  # orbax removes the half-written dirs in the background; a save waits for it.
  assert ckpt.save(
      last_restored + 100,
      {'w': np.zeros((256, 1024), np.float32), 'step': np.int32(0)},
  )
  assert not any('tmp' in p.name for p in directory.iterdir())


def test_read_only_lists_again_when_a_step_vanishes_mid_listing(
    tmp_path, monkeypatch
):
  """A step its writer deletes between orbax's exists() and is_dir() (CI)."""
  ckpt = checkpointing.Checkpointer(tmp_path, max_to_keep=3)
  for step in (1, 2):
    ckpt.save(step, make_state(step))
  path_type = type(epath.Path(tmp_path))
  is_dir = path_type.is_dir

  def rotated_in_between(self):
    caller = sys._getframe(1).f_code.co_name  # pylint: disable=protected-access
    if caller == '_sanitize_metadata_path' and self.name == '1':
      shutil.rmtree(self, ignore_errors=True)  # the writer's max_to_keep
    return is_dir(self)

  monkeypatch.setattr(path_type, 'is_dir', rotated_in_between)
  reader = checkpointing.Checkpointer(tmp_path, read_only=True)
  assert reader.all_steps() == [2]
