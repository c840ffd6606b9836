"""Checkpoints of the whole TrainState with orbax, and what the loop relies on.

WORKDIR/checkpoints/<step>/ holds `state` (the pytree) and `extra` (a small
JSON dict), local or gs://.
  * Atomic: orbax writes a tmp directory and renames (on GCS: marks) it once
    complete; a save killed half-way never parses as a step.
  * `async_save=True` (the training loop's): `save` returns once the state is
    on the host and checked; `wait` and `close` commit.
  * A NaN/Inf state is refused before any write, and orbax rotates old steps
    out only after a new one is committed: divergence never costs a good one.
  * `restore_latest` falls back to the previous step when the newest is
    unreadable (moving it aside, unless `read_only`: readers of a run that may
    be training change nothing), and raises when none is readable: a run
    never silently starts from scratch.

Multi-host: every process calls `save` / `restore_latest` alike; orbax writes
from process 0; the directory must be shared (`restore_latest` raises when
processes see different latest steps). `should_save` never communicates.
"""

import json
import pathlib
import time
from typing import Any, Callable, NamedTuple, Optional

from absl import logging
import chex
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from byol_jax import preemption

_STATE = 'state'
_EXTRA = 'extra'


class NonFiniteStateError(ValueError):
  """The state holds a NaN or Inf; saving it would rotate out a good one."""


class CheckpointRestoreError(RuntimeError):
  """Checkpoints exist but none can be restored (main: one line, exit 2)."""


class DiskFullError(CheckpointRestoreError):
  """A save filled the disk (runner.py raises it); earlier steps are whole."""


class Restored(NamedTuple):
  """A restored checkpoint: step, state (the template's structure), extra."""

  step: int
  state: Any
  extra: dict


def _path_str(path) -> str:
  """A key path as 'params/conv/w'."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def _check_finite(state) -> None:
  """NonFiniteStateError naming every leaf with a NaN/Inf."""
  try:
    chex.assert_tree_all_finite(state)
  except AssertionError:
    bad = [
        _path_str(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        if not np.all(np.isfinite(leaf))
    ]
    raise NonFiniteStateError(  # chex's message holds the whole tree.
        f'refusing to checkpoint a state with non-finite values in '
        f'{len(bad)} leaves (first: {", ".join(bad[:5])}); the previous '
        'checkpoint is kept. The run diverged: lower the learning rate or '
        'check the inputs, then resume from the last good checkpoint.'
    ) from None


def _jsonable(x):
  """json.dumps `default=` hook for NumPy/JAX scalars and small arrays."""
  if isinstance(x, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  raise TypeError(f'{type(x).__name__} is not JSON-serialisable')


def _to_abstract(template):
  """Template leaves -> what orbax restores into (see restore_latest)."""
  return jax.tree.map(
      lambda x: x
      if isinstance(x, (jax.Array, jax.ShapeDtypeStruct))
      else jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
      template,
  )


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run in one directory.

    ckpt = Checkpointer(workdir / 'checkpoints', save_interval_steps=1000)
    restored = ckpt.restore_latest(template_state)
    if decision.preempt or ckpt.should_save(step):  # preemption.decide
      ckpt.save(step, state, {'wall_time_s': ...}, force=True)

  The schedule arguments are preemption.SaveSchedule's; `read_only` opens for
  restoring only (create, delete, clean up, rename nothing; `save` raises).
  """

  def __init__(
      self,
      directory,
      *,
      max_to_keep: int = 3,
      save_interval_steps: Optional[int] = None,
      save_interval_secs: Optional[float] = None,
      time_fn: Callable[[], float] = time.monotonic,
      async_save: bool = False,
      read_only: bool = False,
  ):
    if max_to_keep is None or max_to_keep < 1:
      raise ValueError(f'max_to_keep={max_to_keep}: keep at least 1.')
    # orbax restores only from absolute local paths (a relative workdir
    # would save, then fail to resume); etils may lack absolute().
    self._directory = epath.Path(
        directory
        if '://' in str(directory)
        else pathlib.Path(directory).absolute()
    )
    self._schedule = preemption.SaveSchedule(
        save_interval_steps, save_interval_secs, time_fn
    )
    self._async, self._read_only = async_save, read_only
    if read_only:  # what orbax would otherwise reset, with a warning each
      options = ocp.CheckpointManagerOptions(
          read_only=True, create=False, max_to_keep=None, save_interval_steps=0
      )
    else:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep,
          create=True,
          # Async: orbax writes, commits, then rotates in a background thread.
          enable_async_checkpointing=async_save,
          # `*.orbax-checkpoint-tmp-*` of a process killed mid-save: the
          # workdir's lock (workdir.TrainingLock) makes them no one's.
          cleanup_tmp_directories=True,
      )
    self._manager = self._listing(
        lambda: ocp.CheckpointManager(
            self._directory, options=options, item_names=(_STATE, _EXTRA)
        )
    )

  def _listing(self, fn):
    """fn(); read_only, retried while its writer removes listed steps."""
    for _ in range(9 if self._read_only else 0):
      try:
        return fn()
      except FileNotFoundError:
        pass
    return fn()

  @property
  def directory(self) -> epath.Path:
    return self._directory

  def all_steps(self) -> list[int]:
    """Ascending steps of the complete checkpoints (after a pending save)."""
    self._manager.wait_until_finished()
    self._listing(self._manager.reload)
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step, or None."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def restart_clock(self) -> None:
    """Counts the time schedule from now (e.g. once the step is compiled)."""
    self._schedule.restart_clock()

  def time_due(self) -> bool:
    """The time schedule's answer on this process (preemption.SaveSchedule)."""
    return self._schedule.time_due()

  def should_save(self, step: int, *, time_due: Optional[bool] = None) -> bool:
    """Whether a schedule is due at `step` and it is not saved yet."""
    return (
        self._schedule.due(step, time_due=time_due)
        and step not in self._manager.all_steps()
    )

  def save(
      self,
      step: int,
      state: Any,
      extra: Optional[dict] = None,
      *,
      force: bool = False,
  ) -> bool:
    """Writes `state` (host-side, unreplicated) and `extra` as step `step`.

    Returns whether a checkpoint was written (not when unscheduled without
    `force`, or already saved). Raises NonFiniteStateError (nothing written) for
    a NaN/Inf leaf and TypeError for an `extra` that is not JSON-able.
    """
    if self._read_only:
      raise ValueError(f'{self._directory} was opened read_only.')
    step = int(step)
    if not force and not self.should_save(step):
      return False
    if step in self._manager.all_steps():
      logging.info(
          'Checkpoint for step %d already in %s; not saving again.',
          step,
          self._directory,
      )
      return False
    _check_finite(state)
    # Round-trip through JSON now so a bad `extra` fails before any write.
    extra = json.loads(json.dumps(extra or {}, default=_jsonable))
    # Host-side NumPy (orbax writes it from the primary host only); async,
    # own copies: the background write must not read buffers the caller may
    # reuse (a donated state whose host view is shared, on CPU).
    host_state = jax.tree.map(
        np.array if self._async else np.asarray, jax.device_get(state)
    )
    start = time.monotonic()
    self._manager.save(
        step,
        force=True,
        args=ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(host_state),
                _EXTRA: ocp.args.JsonSave(extra),
            }
        ),
    )
    if not self._async:
      self._manager.wait_until_finished()
    self._schedule.restart_clock()
    logging.info(
        '%s checkpoint %s in %.2fs.',
        'Started writing' if self._async else 'Saved',
        self._directory / str(step),
        time.monotonic() - start,
    )
    return True

  def wait(self) -> None:
    """Blocks until every save started so far is committed to disk."""
    self._manager.wait_until_finished()

  def latest_extra(self) -> Optional[tuple[int, dict]]:
    """(step, extra) of the newest checkpoint with readable `extra`, or None.

    Reads only the small JSON item, to check a resume before building anything.
    Call on every process.
    """
    steps = self.all_steps()
    self._check_processes_see(steps)
    for step in reversed(steps):
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{_EXTRA: ocp.args.JsonRestore()})
        )
      except Exception as e:  # pylint: disable=broad-except
        logging.warning(
            'Checkpoint %s: its extra item is unreadable (%s).',
            self._directory / str(step),
            type(e).__name__,
        )
        continue
      return step, dict(restored[_EXTRA] or {})
    return None

  def restore_latest(self, template: Any) -> Optional[Restored]:
    """The newest readable checkpoint in the template's structure, or None.

    Template leaves give shapes and dtypes: NumPy leaves and plain
    ShapeDtypeStructs restore as NumPy, jax.Array ones with their sharding.
    Raises CheckpointRestoreError when checkpoints exist but none can be read,
    ValueError when a leaf's shape differs from the template's.
    """
    steps = self.all_steps()
    self._check_processes_see(steps)
    abstract = _to_abstract(template)
    failed = {}  # unreadable step -> its error
    while candidates := [s for s in steps if s not in failed]:
      step = candidates[-1]
      try:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    _STATE: ocp.args.StandardRestore(abstract),
                    _EXTRA: ocp.args.JsonRestore(),
                }
            ),
        )
      except Exception as e:  # pylint: disable=broad-except
        # read_only: its writer may have rotated it out. Otherwise any failure
        # to read counts as corruption: report it, try the previous step.
        if self._read_only and step not in (steps := self.all_steps()):
          continue
        logging.warning(
            'Checkpoint %s is unreadable (%s: %s); falling back to the '
            'previous checkpoint.',
            self._directory / str(step),
            type(e).__name__,
            str(e)[:500],
        )
        failed[step] = e
        continue
      _check_shapes(
          state := restored[_STATE], abstract, self._directory / str(step)
      )
      if not self._read_only:
        self._quarantine(sorted(failed))
      logging.info('Restored checkpoint %s.', self._directory / str(step))
      return Restored(step, state, dict(restored[_EXTRA] or {}))
    if not failed:
      return None
    last_error = failed[min(failed)]
    raise CheckpointRestoreError(
        f'{self._directory} holds checkpoints for steps {sorted(failed)} but '
        f'none could be restored (last error: {type(last_error).__name__}: '
        f'{str(last_error)[:500]}). Refusing to start from scratch: repair or '
        'move these checkpoints away, or use a fresh workdir.'
    ) from last_error

  def _check_processes_see(self, steps: list[int]) -> None:
    """Raises on every process unless all see the same latest checkpoint."""
    if jax.process_count() == 1:
      return
    latest = np.asarray(steps[-1] if steps else -1, np.int32)
    seen = np.asarray(multihost_utils.process_allgather(latest)).reshape(-1)
    if len(set(seen.tolist())) > 1:
      raise CheckpointRestoreError(
          f'processes see different checkpoints in {self._directory} (latest '
          f'step per process, -1 for none: {seen.tolist()}). All hosts must '
          'share one workdir: a gs:// bucket on TPU pods, a shared filesystem '
          'on GPU clusters, not a local path on each host.'
      )

  def _quarantine(self, steps: list[int]) -> None:
    """Renames corrupt steps to `<step>.corrupt` (orbax would skip saves)."""
    if not steps:
      return
    if jax.process_index() == 0:
      for step in steps:
        src = self._directory / str(step)
        dst, n = self._directory / f'{step}.corrupt', 0
        while dst.exists():
          n += 1
          dst = self._directory / f'{step}.corrupt.{n}'
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
    """Waits for pending writes and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _check_shapes(state, abstract, where) -> None:
  for (path, got), want in zip(
      jax.tree_util.tree_flatten_with_path(state)[0],
      jax.tree_util.tree_leaves(abstract),
  ):
    if tuple(np.shape(got)) != tuple(want.shape):
      raise ValueError(
          f'checkpoint {where}: leaf {_path_str(path)} has shape '
          f'{np.shape(got)} but the model expects {want.shape}. The config '
          'changed since this checkpoint was written: use a fresh workdir.'
      )
