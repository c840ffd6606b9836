"""Orbax checkpoints of the whole TrainState: WORKDIR/checkpoints/<step>/.

Each step holds `state` (the pytree) and `extra` (a small JSON dict).
"""

import contextlib
import json
import math
import pathlib
import time
from typing import Any, NamedTuple, Optional

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp


class NonFiniteStateError(ValueError):
  """The state holds a NaN or Inf; saving it would rotate out a good one."""


class CheckpointRestoreError(RuntimeError):
  """Checkpoints exist but none can be restored (main: one line, exit 2)."""


class DiskFullError(CheckpointRestoreError):
  """A save filled the disk (runner.py raises it); earlier steps are whole."""


class Restored(NamedTuple):
  step: int
  state: Any
  extra: dict


def _path_str(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator='/')


class Checkpointer(contextlib.AbstractContextManager):
  """The last `max_to_keep` checkpoints, a clock due every `save_interval_secs`;
  `async_save`: `wait`/`close` commit; `read_only`: nothing created or moved."""

  def __init__(
      self,
      directory,
      *,
      max_to_keep: int = 3,
      save_interval_secs: Optional[float] = None,
      async_save: bool = False,
      read_only: bool = False,
  ):
    # orbax restores only from absolute local paths; etils may lack absolute().
    if '://' not in str(directory):
      directory = pathlib.Path(directory).absolute()
    self.directory = epath.Path(directory)
    self._secs = math.inf if save_interval_secs is None else save_interval_secs
    self._async, self._read_only = async_save, read_only
    self.restart_clock()
    # read_only: set what orbax would reset with a warning each.
    options = ocp.CheckpointManagerOptions(
        read_only=read_only,
        create=not read_only,
        max_to_keep=None if read_only else max_to_keep,
        save_interval_steps=0 if read_only else 1,
        enable_async_checkpointing=async_save,
        # A killed save's tmp dirs: no one's, the workdir being locked.
        cleanup_tmp_directories=not read_only,
    )
    self._manager = self._listing(
        lambda: ocp.CheckpointManager(
            self.directory, options=options, item_names=('state', 'extra')
        )
    )

  def _listing(self, fn):
    """fn(); read_only, retried while its writer removes listed steps."""
    # orbax checks a step's exists() then is_dir(): a step deleted between
    # the two raises NotADirectoryError (seen in CI, a rotating writer).
    for _ in range(9 if self._read_only else 0):
      with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return fn()
    return fn()

  def all_steps(self) -> list[int]:
    """Ascending steps of the complete checkpoints (after a pending save)."""
    self._manager.wait_until_finished()
    self._listing(self._manager.reload)
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return max(self.all_steps(), default=None)

  def restart_clock(self) -> None:
    """Counts the time schedule from now (after a save, after compiling)."""
    self._last_save_time = time.monotonic()

  def time_due(self) -> bool:
    """This process's clock (several: agree first, preemption.decide)."""
    return time.monotonic() - self._last_save_time >= self._secs

  def save(self, step: int, state: Any, extra=None) -> bool:
    """Whether `state` and `extra` (JSON) were saved (not if `step` was)."""
    if self._read_only:
      raise ValueError(f'{self.directory} was opened read_only.')
    if (step := int(step)) in self._manager.all_steps():
      return False
    state = jax.device_get(state)
    if bad := [
        _path_str(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        if not np.all(np.isfinite(leaf))
    ]:
      raise NonFiniteStateError(
          f'refusing to checkpoint a state with non-finite values in '
          f'{len(bad)} leaves (first: {", ".join(bad[:5])}); the previous '
          'checkpoint is kept. The run diverged: lower the learning rate or '
          'check the inputs, then resume from the last good checkpoint.'
      )
    # A bad `extra` fails before the state is written.
    extra = json.loads(
        json.dumps(extra or {}, default=lambda x: np.asarray(x).tolist())
    )
    # async: own copies, the caller may reuse the buffers (donated, on CPU).
    state = jax.tree.map(np.array if self._async else np.asarray, state)
    self._manager.save(
        step,
        force=True,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)
        ),
    )
    if not self._async:
      self._manager.wait_until_finished()
    self.restart_clock()
    logging.info('%s %s', 'Writing' if self._async else 'Saved', self._at(step))
    return True

  def wait(self) -> None:
    """Blocks until every save started so far is committed to disk."""
    self._manager.wait_until_finished()

  def _at(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def _checked_steps(self) -> list[int]:
    """all_steps(); raises on every process unless all see the same latest."""
    steps = self.all_steps()
    if jax.process_count() > 1:
      latest = np.asarray(steps[-1] if steps else -1, np.int32)
      seen = np.asarray(multihost_utils.process_allgather(latest)).reshape(-1)
      if len(set(seen.tolist())) > 1:
        raise CheckpointRestoreError(
            f'processes see different checkpoints in {self.directory} (latest'
            f' step per process, -1 for none: {seen.tolist()}). All hosts '
            'must share one workdir: a gs:// bucket on TPU pods, a shared '
            'filesystem on GPU clusters, not a local path on each host.'
        )
    return steps

  def latest_extra(self) -> Optional[tuple[int, dict]]:
    """(step, extra) of the newest readable `extra` item, or None (cheap)."""
    args = ocp.args.Composite(extra=ocp.args.JsonRestore())
    for step in reversed(self._checked_steps()):
      try:
        return step, dict(self._manager.restore(step, args=args).extra or {})
      except Exception as e:  # pylint: disable=broad-except
        logging.warning(
            'Checkpoint %s: its extra item is unreadable (%s).',
            self._at(step),
            type(e).__name__,
        )
    return None

  def restore_latest(self, template: Any) -> Optional[Restored]:
    """The newest readable checkpoint as `template` (its jax shardings)."""
    steps = self._checked_steps()
    abstract = jax.tree.map(
        lambda x: x
        if isinstance(x, (jax.Array, jax.ShapeDtypeStruct))
        else jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
        template,
    )
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()
    )
    failed = {}  # unreadable step -> its error
    while steps:
      step = steps.pop()
      try:
        restored = self._manager.restore(step, args=args)
      except Exception as e:  # pylint: disable=broad-except
        # read_only: its writer may have rotated it out; else corrupt.
        if self._read_only and step not in (listed := self.all_steps()):
          steps = [s for s in listed if s not in failed]
          continue
        logging.warning(
            'Checkpoint %s is unreadable (%s: %s); falling back to the '
            'previous checkpoint.',
            self._at(step),
            type(e).__name__,
            str(e)[:500],
        )
        failed[step] = e
        continue
      for (path, got), want in zip(
          jax.tree_util.tree_flatten_with_path(restored.state)[0],
          jax.tree_util.tree_leaves(abstract),
      ):
        if tuple(np.shape(got)) != tuple(want.shape):
          raise ValueError(
              f'checkpoint {self._at(step)}: leaf {_path_str(path)} has shape '
              f'{np.shape(got)} but the model expects {want.shape}. The '
              'config changed since this checkpoint was written: use a '
              'fresh workdir.'
          )
      if failed and not self._read_only:
        self._quarantine(sorted(failed))
      logging.info('Restored checkpoint %s.', self._at(step))
      return Restored(step, restored.state, dict(restored.extra or {}))
    if not failed:
      return None
    last_error = failed[min(failed)]
    raise CheckpointRestoreError(
        f'{self.directory} holds checkpoints for steps {sorted(failed)} but '
        f'none could be restored (last error: {type(last_error).__name__}: '
        f'{str(last_error)[:500]}). Refusing to start from scratch: repair or '
        'move these checkpoints away, or use a fresh workdir.'
    ) from last_error

  def _quarantine(self, steps: list[int]) -> None:
    """Renames corrupt steps to `<step>.corrupt` (orbax would skip saves)."""
    if jax.process_index() == 0:
      for step in steps:
        src, n = self._at(step), len(list(self.directory.glob(f'{step}.c*')))
        dst = self.directory / (f'{step}.corrupt' + (f'.{n}' if n else ''))
        try:
          src.rename(dst)
        except Exception as e:  # pylint: disable=broad-except
          raise CheckpointRestoreError(
              f'could not move the corrupt checkpoint {src} aside ({e}); move '
              'or delete it by hand, then restart.'
          ) from e
        logging.warning('Moved corrupt checkpoint %s to %s.', src, dst)
    ocp.multihost.sync_global_processes('byol_jax_checkpoint_quarantine')
    self._manager.reload()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __exit__(self, *exc):
    self.close()
