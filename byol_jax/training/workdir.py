"""A run directory's file names (their one home), paths and lock."""

import fcntl
import json
import os
import socket
import time

from etils import epath

from byol_jax.config import validation

CONFIG = 'config.json'
CONFIG_HISTORY = 'config_history.jsonl'
CHECKPOINTS = 'checkpoints'
METRICS = 'metrics.jsonl'
PRETRAIN_DONE = 'pretrain_done.json'
EVAL_RESULTS = 'eval_results.json'
LOCK = 'training.lock'


class WorkdirError(validation.ConfigError):
  """A --workdir that cannot be used (a file, or another run's); one line."""


def _path_of(name: str):
  return lambda workdir: epath.Path(workdir) / name


config_path = _path_of(CONFIG)
config_history_path = _path_of(CONFIG_HISTORY)
checkpoint_dir = _path_of(CHECKPOINTS)
metrics_path = _path_of(METRICS)
pretrain_done_path = _path_of(PRETRAIN_DONE)
eval_results_path = _path_of(EVAL_RESULTS)
lock_path = _path_of(LOCK)


def check_not_a_file(workdir) -> None:
  """WorkdirError: WORKDIR (or its nearest existing parent, or its
  checkpoints/) a file, or its config.json not JSON."""
  path = epath.Path(workdir)
  existing = next((p for p in (path, *path.parents) if p.exists()), None)
  if existing is not None and not existing.is_dir():
    what = 'is' if existing == path else f'is inside {existing}, which is'
    raise WorkdirError(
        f'--workdir={workdir} {what} an existing file, not a directory: '
        "pass a directory (a new path, or an earlier run's workdir to "
        'resume it), e.g. --workdir=/tmp/byol_run.'
    )
  if (ckpts := checkpoint_dir(workdir)).exists() and not ckpts.is_dir():
    raise WorkdirError(
        f'{ckpts} is a file, not a checkpoint directory: move it away, or '
        'pass a fresh --workdir.'
    )
  config = config_path(path)
  try:
    if config.exists():
      json.loads(config.read_text())
  except (OSError, ValueError) as e:
    raise WorkdirError(
        f'{config} cannot be read as JSON ({" ".join(str(e).split())}); fix '
        'or delete it (the checkpoints record what a resume checks).'
    ) from None


class TrainingLock:
  """One run per workdir: fcntl.flock (freed when its process dies); on gs://
  the file itself, checked then written (racy; a dead run's deleted by hand)."""

  def __init__(self, workdir):
    self._workdir, self.path = workdir, lock_path(workdir)
    self._fd, self._held = None, False

  def acquire(self) -> None:
    """Takes the lock (creating the workdir); WorkdirError naming its holder."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    started = time.strftime('%Y-%m-%d %H:%M:%S %Z')
    mine = json.dumps(
        dict(host=socket.gethostname(), pid=os.getpid(), started=started)
    )
    if '://' in str(self.path):
      if self.path.exists():
        raise WorkdirError(self._refusal(remote=True))
      self.path.write_text(mine)
      self._held = True
      return
    while True:  # until the locked file is the one at self.path
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        os.close(fd)
        raise WorkdirError(self._refusal()) from None
      try:  # a holder that released meanwhile unlinked what we opened
        if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
          break
      except FileNotFoundError:
        pass
      os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, mine.encode())
    self._fd, self._held = fd, True

  def release(self) -> None:
    if self._held:
      self.path.unlink(missing_ok=True)  # first: an opener of it retries
      if self._fd is not None:
        os.close(self._fd)
      self._fd, self._held = None, False

  def _refusal(self, remote: bool = False) -> str:
    holder = {}
    for _ in range(10):  # a lock being written reads empty for an instant
      try:
        holder = json.loads(self.path.read_text())
        break
      except (FileNotFoundError, ValueError):
        time.sleep(0.1)
    host, pid = holder.get('host', '?'), holder.get('pid', '?')
    fix = (
        'wait for it to finish or pass another --workdir; if you know that '
        f'run is dead (e.g. its host was preempted), delete {self.path} '
        'and rerun.'
        if remote
        else f'wait for it to finish, stop it (kill {pid} on host {host}), '
        'or pass another --workdir.'
    )
    return (
        f'--workdir={self._workdir} is in use by another run (host {host}, '
        f'pid {pid}, started {holder.get("started", "?")}; lock file '
        f'{self.path}): {fix}'
    )
