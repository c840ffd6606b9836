"""A training workdir is safe against readers and twins.

Readers (encoder.load_encoder, linear evaluation of another workdir) open the
checkpoints read-only; a training run holds WORKDIR/training.lock
(workdir.TrainingLock), so a second one stops at once; a workdir that is a
file and a full disk end in one line and exit code 2.

The trainings are the same tiny 12-step run with a checkpoint every step
(one CPU device, so they share compiled programs through the persistent
cache); the undisturbed one runs once per module, beside the first test.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest
import xla_env

from byol_jax import encoder
from byol_jax import experiment
from byol_jax.training import checkpointing
from byol_jax.training import runner
from byol_jax.training import workdir as workdir_lib

# orbax's asyncio loops, closed at exit (as in test_checkpointing.py).
pytestmark = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning'
)
REPO = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT_S = 600
ARGS = (
    '--config=experiments/gn_ws.py:tiny,batch=16',
    '--config.training.total_steps=12',
    '--config.checkpoint.every_steps=1',
    '--config.eval.after_pretraining=false',
    '--config.logging.knn_every_steps=0',
)
MAIN = ('-m', 'byol_jax.main')

# main with orbax's JSON item writer failing as a full disk does (Python's
# write_text raises OSError(ENOSPC)) from the checkpoint of step 2 on; the
# arrays' writer (tensorstore) raises ValueError('RESOURCE_EXHAUSTED: ... No
# space left on device'), test_disk_full_is_recognised.
_FULL_DISK = textwrap.dedent(r"""
    import errno, os, re
    from absl import app
    import orbax.checkpoint as ocp
    from byol_jax import main

    save = ocp.handlers.JsonCheckpointHandler._save_fn

    async def full_disk(self, x, directory):
      step = re.search(r'/(\d+)\.orbax-checkpoint-tmp', str(directory))
      if step and int(step.group(1)) >= 2:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                      str(directory / self._filename))
      return await save(self, x, directory)

    ocp.handlers.JsonCheckpointHandler._save_fn = full_disk
    app.run(main.main, flags_parser=main.parse_flags)
""")


def _start(workdir, log, *prefix):
  """A tiny training in workdir (stderr to log: INFO lines, a long config)."""
  with open(log, 'w') as stderr:
    return subprocess.Popen(
        [sys.executable, *(prefix or MAIN), f'--workdir={workdir}', *ARGS],
        cwd=REPO,
        env=xla_env.subprocess_env(1, PYTHONUNBUFFERED='1'),
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def _finished_sha(proc, workdir, log) -> str:
  assert proc.wait(timeout=TIMEOUT_S) == 0, pathlib.Path(log).read_text()[
      -3000:
  ]
  done = json.loads(workdir_lib.pretrain_done_path(workdir).read_text())
  assert done['step'] == 12
  assert not workdir_lib.lock_path(workdir).exists()  # released at the end
  return done['state_sha256']


def _steps(workdir) -> list:
  return sorted(
      int(p.name)
      for p in (pathlib.Path(workdir) / 'checkpoints').glob('*')
      if p.name.isdigit()
  )


def _saving(workdir) -> bool:
  return any(
      'orbax-checkpoint-tmp' in p.name
      for p in (pathlib.Path(workdir) / 'checkpoints').glob('*')
  )


def _wait_for_checkpoint(workdir, proc, log):
  deadline = time.time() + TIMEOUT_S
  while not _steps(workdir):
    assert proc.poll() is None, pathlib.Path(log).read_text()[-3000:]
    assert time.time() < deadline
    time.sleep(0.02)


def _one_line(proc) -> str:
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  return lines[0]


def _listing(directory) -> dict:
  return {
      str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
      for p in sorted(pathlib.Path(directory).rglob('*'))
  }


@pytest.fixture(scope='module')
def undisturbed(tmp_path_factory):
  """The reference run, started at once; `.sha()` waits for its state hash."""
  root = tmp_path_factory.mktemp('undisturbed')
  workdir, log = root / 'run', root / 'stderr.txt'
  proc = _start(workdir, log)

  class Reference:
    path = workdir

    @staticmethod
    def sha():
      return _finished_sha(proc, workdir, log)

  yield Reference
  if proc.poll() is None:
    proc.kill()
    proc.wait()


def test_load_encoder_while_training_leaves_the_run_undisturbed(
    tmp_path, undisturbed
):
  """load_encoder in a loop, some of it while a save is half-written."""
  workdir, log = tmp_path / 'run', tmp_path / 'stderr.txt'
  proc = _start(workdir, log)
  _wait_for_checkpoint(workdir, proc, log)  # config.json is written before
  loaded, during_save = [], 0
  while proc.poll() is None:
    # Pause the run while a save is half-written, so that this read meets
    # its `<step>.orbax-checkpoint-tmp` (a writer's manager deletes those).
    paused = _saving(workdir)
    if paused:
      proc.send_signal(signal.SIGSTOP)
    try:
      during_save += paused and _saving(workdir)
      encode = encoder.load_encoder(workdir)
    finally:
      if paused:
        proc.send_signal(signal.SIGCONT)
    loaded.append(encode.pretrained.step)
  print(f'loaded steps {loaded}; {during_save} reads met a save in progress')
  assert loaded and during_save >= 1
  assert _finished_sha(proc, workdir, log) == undisturbed.sha()
  assert not any('corrupt' in p.name for p in workdir.rglob('*'))


def test_a_second_training_on_the_workdir_stops_at_once(tmp_path, undisturbed):
  workdir, log = tmp_path / 'run', tmp_path / 'stderr.txt'
  first = _start(workdir, log)
  _wait_for_checkpoint(workdir, first, log)
  first.send_signal(signal.SIGSTOP)  # still running, whatever the timing
  try:
    start = time.time()
    # JAX_LOG_COMPILES logs every compilation: one line means none happened.
    second = subprocess.run(
        [sys.executable, *MAIN, f'--workdir={workdir}', *ARGS],
        cwd=REPO,
        env=xla_env.subprocess_env(1, JAX_LOG_COMPILES='1'),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    elapsed = time.time() - start
  finally:
    first.send_signal(signal.SIGCONT)
  assert second.returncode == 2, second.stderr[-3000:]
  line = _one_line(second)
  print(f'refused in {elapsed:.1f}s: {line}')
  assert line.startswith('Config error: ') and 'in use' in line
  assert f'host {socket.gethostname()}, pid {first.pid}' in line
  assert _finished_sha(first, workdir, log) == undisturbed.sha()


_HOLD = (
    'import sys, time; from byol_jax.training import workdir; '
    'workdir.TrainingLock(sys.argv[1]).acquire(); print("held", '
    'flush=True); time.sleep(60)'
)


def test_a_killed_holders_lock_is_free_a_live_ones_refused(tmp_path):
  """The kernel's lock: held while its process lives, free once it dies."""
  holder = subprocess.Popen(
      [sys.executable, '-c', _HOLD, str(tmp_path)],
      stdout=subprocess.PIPE,
      text=True,
  )
  try:
    assert holder.stdout.readline().strip() == 'held'
    path = workdir_lib.lock_path(tmp_path)
    held = path.read_text()
    with pytest.raises(workdir_lib.WorkdirError) as e:
      workdir_lib.TrainingLock(tmp_path).acquire()
    message = str(e.value)
    assert (
        f'host {socket.gethostname()}, pid {holder.pid}' in message
        and '\n' not in message
    )
    assert path.read_text() == held  # the refused start changed nothing
  finally:
    holder.kill()  # SIGKILL: no release, the file stays
    holder.wait()
  assert json.loads(path.read_text())['pid'] == holder.pid
  lock = workdir_lib.TrainingLock(tmp_path)
  lock.acquire()
  assert json.loads(path.read_text())['pid'] == os.getpid()
  lock.release()
  assert not path.exists()


def test_two_starts_beside_a_killed_runs_lock_exactly_one_wins(tmp_path):
  """Two acquires at once, 40 times, each over a dead run's lock file."""
  for trial in range(40):
    workdir = tmp_path / str(trial)
    workdir.mkdir()
    workdir_lib.lock_path(workdir).write_text(
        json.dumps(
            {'host': socket.gethostname(), 'pid': 1 << 30, 'started': 'then'}
        )
    )
    locks = [workdir_lib.TrainingLock(workdir) for _ in range(2)]
    barrier, won = threading.Barrier(2), []

    def start(lock):
      barrier.wait()
      try:
        lock.acquire()
        won.append(lock)
      except workdir_lib.WorkdirError:
        pass

    threads = [threading.Thread(target=start, args=(l,)) for l in locks]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    assert len(won) == 1, trial
    won[0].release()


def test_load_encoder_skips_a_corrupt_newest_checkpoint_touching_nothing(
    tmp_path, undisturbed
):
  undisturbed.sha()
  workdir = tmp_path / 'copy'
  shutil.copytree(undisturbed.path, workdir)
  *_, previous, newest = _steps(workdir)
  data = [
      p
      for p in (workdir / 'checkpoints' / str(newest) / 'state').rglob('*')
      if p.is_file()
  ]
  biggest = max(data, key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
  before = _listing(workdir)
  encode = encoder.load_encoder(workdir)
  assert encode.pretrained.step == previous
  assert _listing(workdir) == before


def _refused(workdir) -> str:
  """The one error line of a main run on `workdir` refused with exit 2."""
  proc = subprocess.run(
      [sys.executable, *MAIN, f'--workdir={workdir}', *ARGS],
      cwd=REPO,
      env=xla_env.subprocess_env(1),
      capture_output=True,
      text=True,
      timeout=TIMEOUT_S,
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  return _one_line(proc)


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  afile = tmp_path / 'results.txt'
  afile.write_text('not a run')
  line = _refused(afile)
  assert f'--workdir={afile} is an existing file, not a directory' in line
  assert afile.read_text() == 'not a run'
  with pytest.raises(workdir_lib.WorkdirError, match='inside'):
    workdir_lib.check_not_a_file(afile / 'run')


@pytest.mark.parametrize(
    'name, text, message',
    [
        ('checkpoints', 'hi', 'is a file, not a checkpoint directory'),
        ('config.json', '{not json', 'cannot be read as JSON'),
    ],
)
def test_a_damaged_workdir_is_one_line(tmp_path, name, text, message):
  """Refused before compiling, the file untouched (was: a traceback)."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / name).write_text(text)
  assert f'{workdir / name} {message}' in _refused(workdir)
  assert (workdir / name).read_text() == text
  if name == 'checkpoints':
    with pytest.raises(FileNotFoundError, match=message):
      encoder.latest_checkpoint_step(workdir)  # load_encoder, linear eval


def test_full_disk_is_one_line_and_keeps_the_earlier_checkpoint(tmp_path):
  workdir, log = tmp_path / 'run', tmp_path / 'stderr.txt'
  script = tmp_path / 'full_disk.py'
  script.write_text(_FULL_DISK)
  proc = _start(workdir, log, str(script))
  assert proc.wait(timeout=TIMEOUT_S) == 2
  stderr = log.read_text()
  # One error line: no traceback, no ERROR record (absl's 'E1206 ...').
  errors = [
      l
      for l in stderr.splitlines()
      if l.startswith('Checkpoint error') or re.match(r'E\d{4} ', l)
  ]
  assert len(errors) == 1 and 'Traceback' not in stderr, stderr[-3000:]
  assert errors[0].startswith('Checkpoint error: no space left on the device')
  assert f'steps [1] in {workdir / "checkpoints"}' in errors[0]
  assert not workdir_lib.lock_path(workdir).exists()
  config = encoder.saved_config(workdir)
  restored = checkpointing.Checkpointer(
      workdir / 'checkpoints', read_only=True
  ).restore_latest(
      experiment.state_template(config, config.derived.num_classes)
  )
  assert restored.step == 1 and restored.extra['wall_time_s'] > 0
  assert int(restored.state.step) == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored.state))


def test_disk_full_is_recognised():
  # What orbax 0.12.8 raised on a full 1 MB tmpfs (tensorstore's writer).
  measured = ValueError(
      'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local '
      'file "/mnt/c/3.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.'
      'process_0/": Failed to write 263579 bytes to file 8: No space left on '
      "device [os_error_code='28']"
  )
  assert runner._is_disk_full(measured)
  try:
    try:
      raise OSError(28, os.strerror(28), '/x')
    except OSError as e:
      raise RuntimeError('save failed') from e
  except RuntimeError as chained:
    assert runner._is_disk_full(chained)
  assert not runner._is_disk_full(ValueError('NOT_FOUND: /x'))
  assert not runner._is_disk_full(OSError(13, 'Permission denied'))
  # A device out of memory is not a full disk (XLA's status is the same).
  assert not runner._is_disk_full(
      RuntimeError(
          'RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0GiB.'
      )
  )
