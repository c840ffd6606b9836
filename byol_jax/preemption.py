"""When to checkpoint: the schedule, preemption, the processes' agreement.

`SaveSchedule` says when a save is due (every N steps, every T seconds of
training); `PreemptionWatcher` turns SIGTERM / SIGINT into a flag the training loop
polls; `decide` turns that flag and the checkpoint clock
(`Checkpointer.time_due`) into the same answer on every process: stop now,
and whether the clock asks for a save.

Why the decision is ours and not orbax's: orbax's
`ContinuousCheckpointingPolicy` (a save every N seconds) computes the
answer on the primary host and hands it to the others through a blocking
barrier at every call, a cross-host exchange per step; `decide` exchanges
only at logging steps.
Its preemption policy (and `multihost_utils.reached_preemption_sync_point`)
relies on JAX's own SIGTERM notifier, which `PreemptionWatcher` replaces so
that SIGINT (Ctrl-C) and runs without jax.distributed behave the same way.
The step schedule (a save every N steps) needs no agreement: a modulo, as
orbax's `FixedIntervalPolicy`. `SaveSchedule` holds both schedules and
`Checkpointer.should_save` asks it.
"""
import signal
import threading
import time
from typing import Callable, NamedTuple, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


class SaveSchedule:
  """Checkpoint every `every_steps` steps and/or `every_secs` seconds."""

  def __init__(self, every_steps: Optional[int] = None,
               every_secs: Optional[float] = None,
               time_fn: Callable[[], float] = time.monotonic):
    """The schedule; the clock starts now.

    Args:
      every_steps: a save is due at multiples of this step; None: never.
      every_secs: a save is also due once this many seconds (of `time_fn`)
        have passed since the last save; None: never.
      time_fn: the clock, in seconds (injectable for tests).

    Raises:
      ValueError: every_steps < 1 or every_secs <= 0.
    """
    if every_steps is not None and every_steps < 1:
      raise ValueError(f'save_interval_steps={every_steps}: use a positive '
                       'integer, or None for no step schedule.')
    if every_secs is not None and every_secs <= 0:
      raise ValueError(f'save_interval_secs={every_secs}: use a positive '
                       'number, or None to disable the time schedule.')
    self._every_steps, self._every_secs = every_steps, every_secs
    self._time_fn = time_fn
    self.restart_clock()

  def restart_clock(self) -> None:
    """Counts the time schedule from now (after a save, after compiling)."""
    self._last_save_time = self._time_fn()

  def time_due(self) -> bool:
    """Whether `every_secs` have passed since the last save.

    Reads this process's clock only; on several processes agree on one
    answer (`decide`) before acting on it: clocks differ, and every process
    must join a save or orbax's barrier hangs.

    Returns:
      The answer; False when the time schedule is off.
    """
    return (self._every_secs is not None and
            self._time_fn() - self._last_save_time >= self._every_secs)

  def due(self, step: int, *, time_due: Optional[bool] = None) -> bool:
    """Whether either schedule asks for a checkpoint at `step`.

    Args:
      step: the number of updates applied to the state about to be saved.
      time_due: the time schedule's answer agreed across processes; None
        reads `time_due()` on one process and leaves the clock out on
        several.

    Returns:
      True when `step` is a multiple of `every_steps` or the time is due.
    """
    if time_due is None:
      time_due = jax.process_count() == 1 and self.time_due()
    return bool(time_due) or bool(self._every_steps and
                                  step % self._every_steps == 0)


class PreemptionWatcher:
  """Turns SIGTERM / SIGINT into a flag the train loop polls.

    with PreemptionWatcher() as watcher:
      for step in ...:
        state = update(...)
        if watcher.requested:
          ckpt.save(step, state, extra, force=True)
          break

  The first signal only sets the flag (the loop saves and exits cleanly). After
  a first SIGINT the previous SIGINT handler is back, so a second Ctrl-C still
  kills the process. Handlers are restored on exit. Signals are delivered to
  the main thread only, so the watcher is inactive (with a warning) when
  entered from another thread. On multi-host runs the signal may reach only
  some hosts: agree on the flag across hosts (`decide`) before saving, since
  every host must take part in the save.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    """Watches `signals` once entered as a context.

    Args:
      signals: the signal.Signals to watch.
    """
    self._signals = tuple(signals)
    self._previous = {}
    self._signal_name = None

  @property
  def requested(self) -> bool:
    """True once a watched signal has arrived."""
    return self._signal_name is not None

  @property
  def signal_name(self) -> Optional[str]:
    """Name of the first signal received ('SIGTERM'), or None."""
    return self._signal_name

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self._signal_name is None:
      self._signal_name = name
      logging.warning('Received %s: will checkpoint and stop after this step.',
                      name)
    if signum == signal.SIGINT:
      previous = _restorable(self._previous[signal.SIGINT])
      if previous is signal.SIG_IGN:
        # An ignored SIGINT would make a second Ctrl-C a no-op; use Python's
        # default (KeyboardInterrupt) so the user can always stop the process.
        previous = signal.default_int_handler
      signal.signal(signal.SIGINT, previous)

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      logging.warning('PreemptionWatcher entered outside the main thread: '
                      'signal handlers not installed, preemption not watched.')
      return self
    for sig in self._signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, _restorable(previous))
    self._previous = {}
    return False


def _restorable(handler):
  """signal.getsignal() returns None for handlers installed outside Python."""
  return signal.SIG_DFL if handler is None else handler


class Decision(NamedTuple):
  """What every process does after a step (the same on all of them).

  Attributes:
    preempt: checkpoint now and stop (a signal reached some process).
    time_due: the checkpoint clock's answer, for `Checkpointer.should_save`.
    collectives: cross-process exchanges this decision took (0 or 1).
  """
  preempt: bool
  time_due: bool
  collectives: int


def decide(watcher: PreemptionWatcher, ckpt, sync: bool) -> Decision:
  """Agrees on preemption and the checkpoint clock across processes.

  One process: the signal flag and the clock, read every step (no
  communication). Several: a signal may reach only some hosts and clocks
  differ, while every host must join a save (else orbax's barrier hangs), so
  at `sync` steps one all-gather of [signal received, clock due] agrees:
  preempt when any process got a signal, save on process 0's clock. Other
  steps neither preempt nor save on the clock.

  Args:
    watcher: this process's entered PreemptionWatcher.
    ckpt: the run's checkpointing.Checkpointer (its `time_due()` is read).
    sync: whether this is a step where processes communicate (a logging
      step); every process must pass the same value.

  Returns:
    The Decision, equal on every process.
  """
  if jax.process_count() == 1:
    return Decision(watcher.requested, ckpt.time_due(), 0)
  if not sync:
    return Decision(False, False, 0)
  flags = np.asarray([watcher.requested, ckpt.time_due()], np.int32)
  gathered = np.asarray(multihost_utils.process_allgather(flags)).reshape(-1, 2)
  return Decision(bool(gathered[:, 0].max()), bool(gathered[0, 1]), 1)
