"""The run directory's layout (the one home of its file names) and its lock.

A pre-training run's WORKDIR holds:

  config.json            the built config (inputs and the `derived` section)
  config_history.jsonl   one line per start under a new or changed config
  checkpoints/<step>/    orbax checkpoints of the whole TrainState
  metrics.jsonl          one JSON line per logged step (writers.py)
  pretrain_done.json     last step, last metrics, wall time, state_sha256
  eval_results.json      linear evaluation (linear_eval.run_linear_eval)
  training.lock          host and pid of the training writing it, while it runs

Process 0 writes all of them but the checkpoints. A workdir is a local path
or a gs:// URL: the helpers return etils.epath paths.
"""
import json
import os
import pathlib
import socket
import time

from absl import logging
from etils import epath

from byol_jax import validation

CONFIG = 'config.json'
CONFIG_HISTORY = 'config_history.jsonl'
CHECKPOINTS = 'checkpoints'
METRICS = 'metrics.jsonl'
PRETRAIN_DONE = 'pretrain_done.json'
EVAL_RESULTS = 'eval_results.json'
LOCK = 'training.lock'


class WorkdirError(validation.ConfigError):
  """A --workdir that cannot be used (a file, or another run's); one line."""


def config_path(workdir) -> epath.Path:
  """WORKDIR/config.json.

  Args:
    workdir: the run directory, a local path or gs:// URL (str or path).

  Returns:
    epath.Path of the built config (JSON), written at every start.
  """
  return epath.Path(workdir) / CONFIG


def config_history_path(workdir) -> epath.Path:
  """WORKDIR/config_history.jsonl.

  Args:
    workdir: the run directory, a local path or gs:// URL (str or path).

  Returns:
    epath.Path of the jsonl file with one line per start under a new or
    changed config.
  """
  return epath.Path(workdir) / CONFIG_HISTORY


def checkpoint_dir(workdir) -> epath.Path:
  """WORKDIR/checkpoints (one sub-directory per saved step).

  Args:
    workdir: the run directory, a local path or gs:// URL (str or path).

  Returns:
    epath.Path of the orbax checkpoint directory; each `<step>/`
    sub-directory holds the TrainState saved at that step.
  """
  return epath.Path(workdir) / CHECKPOINTS


def metrics_path(workdir) -> epath.Path:
  """WORKDIR/metrics.jsonl.

  Args:
    workdir: the run directory, a local path or gs:// URL (str or path).

  Returns:
    epath.Path of the jsonl file with one JSON object per logged step.
  """
  return epath.Path(workdir) / METRICS


def pretrain_done_path(workdir) -> epath.Path:
  """WORKDIR/pretrain_done.json.

  Args:
    workdir: the run directory, a local path or gs:// URL (str or path).

  Returns:
    epath.Path of the JSON file written when pre-training finishes.
  """
  return epath.Path(workdir) / PRETRAIN_DONE


def eval_results_path(workdir) -> epath.Path:
  """WORKDIR/eval_results.json.

  Args:
    workdir: the run directory, a local path or gs:// URL (str or path).

  Returns:
    epath.Path of the linear-evaluation results (JSON).
  """
  return epath.Path(workdir) / EVAL_RESULTS


def lock_path(workdir) -> epath.Path:
  """WORKDIR/training.lock.

  Args:
    workdir: the run directory, a local path or gs:// URL (str or path).

  Returns:
    epath.Path of the lock a training run holds while it writes the workdir
    (TrainingLock).
  """
  return epath.Path(workdir) / LOCK


def check_not_a_file(workdir) -> None:
  """Raises WorkdirError when WORKDIR or its nearest existing parent is a file.

  Args:
    workdir: the run directory, a local path or gs:// URL (str or path).

  Raises:
    WorkdirError: naming the file and what to pass instead.
  """
  path = epath.Path(workdir)
  for existing in (p for p in (path, *path.parents) if p.exists()):
    if not existing.is_dir():
      what = 'is' if existing == path else f'is inside {existing}, which is'
      raise WorkdirError(
          f'--workdir={workdir} {what} an existing file, not a directory: '
          'pass a directory (a new path, or an earlier run\'s workdir to '
          'resume it), e.g. --workdir=/tmp/byol_run.')
    return


class TrainingLock:
  """WORKDIR/training.lock: at most one training run writes a workdir.

  The training run (process 0 of a multi-process run; runner.py) takes it
  before it touches the workdir's checkpoints and releases it when it ends,
  whether normally, on an error or after the SIGTERM checkpoint. Readers
  (encoder.load_encoder, linear evaluation of another workdir) never take
  it. A lock whose owner ran on this host and is gone (killed) is taken over
  with a warning; one of another host is refused, since its pid cannot be
  checked from here.

  Guarantee: on a local or shared POSIX filesystem the lock is created with
  O_EXCL, so of two starts exactly one gets it. etils.epath has no exclusive
  create for gs://: there the lock is checked, then written, and two starts
  within the same second or so could both pass; a start after the first
  one's lock is written is always refused.
  """

  def __init__(self, workdir):
    """A lock on `workdir` (a local path or gs:// URL), not yet taken.

    Args:
      workdir: the run directory.
    """
    self._workdir = workdir
    self.path = lock_path(workdir)
    self.owner = {'host': socket.gethostname(), 'pid': os.getpid()}

  def acquire(self) -> None:
    """Creates the lock (and the workdir), or raises naming its holder.

    Raises:
      WorkdirError: another training run holds the lock.
    """
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
      check_not_a_file(self._workdir)
      raise
    mine = json.dumps(dict(self.owner,
                           started=time.strftime('%Y-%m-%d %H:%M:%S %Z')))
    for _ in range(3):
      if self._create(mine):
        return
      holder = self._holder()
      if holder is None:  # released meanwhile
        continue
      if not self._stale(holder):
        raise WorkdirError(self._refusal(holder))
      logging.warning('Taking over %s: its training run (pid %s on this host) '
                      'is no longer running.', self.path, holder['pid'])
      self.path.unlink(missing_ok=True)
    raise WorkdirError(self._refusal(self._holder() or {}))

  def release(self) -> None:
    """Removes the lock if it is still this process's."""
    holder = self._holder()
    if holder is not None and all(holder.get(k) == v
                                  for k, v in self.owner.items()):
      self.path.unlink(missing_ok=True)

  def _create(self, text: str) -> bool:
    """Writes the lock unless it exists; True when this call created it."""
    if '://' in str(self.path):
      if self.path.exists():  # no exclusive create on gs:// (class docstring)
        return False
      self.path.write_text(text)
      return True
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    return True

  def _holder(self):
    """The lock's {'host', 'pid', 'started'}, None when there is none."""
    for _ in range(10):  # a lock being written reads empty for an instant
      try:
        return json.loads(self.path.read_text())
      except FileNotFoundError:
        return None
      except ValueError:
        time.sleep(0.1)
    return {'host': '?', 'pid': '?', 'started': 'unreadable lock file'}

  def _stale(self, holder: dict) -> bool:
    """The holder ran on this host and its pid is gone (or is this process)."""
    if holder.get('host') != self.owner['host']:
      return False
    pid = holder.get('pid')
    if pid == self.owner['pid']:
      return True  # a lock left by an earlier process that had our pid
    try:
      os.kill(int(pid), 0)  # signal 0: only checks that the pid exists
    except ProcessLookupError:
      return True
    except (OSError, TypeError, ValueError):  # another user's, or no pid
      return False
    try:  # a killed process not yet reaped (a zombie) keeps its pid
      stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
    except OSError:
      return False
    return stat.rpartition(')')[2].split()[0] == 'Z'

  def _refusal(self, holder: dict) -> str:
    pid = holder.get('pid')
    fix = (f'wait for it to finish, stop it (kill {pid}), or pass another '
           '--workdir.' if holder.get('host') == self.owner['host'] else
           'wait for it to finish or pass another --workdir; if you know '
           f'that run is dead (e.g. its host was preempted), delete '
           f'{self.path} and rerun.')
    return (f'--workdir={self._workdir} is in use by another training run '
            f'(host {holder.get("host")}, pid {pid}, started '
            f'{holder.get("started")}; lock file {self.path}): {fix}')
