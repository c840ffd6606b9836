"""When to checkpoint: the schedule, preemption, the processes' agreement.

Ours, not orbax's: its `ContinuousCheckpointingPolicy` hands the primary
host's answer to the others through a blocking barrier at every call (a
cross-host exchange per step), while `decide` exchanges only at logging
steps; its preemption policy relies on JAX's own SIGTERM notifier, which
`PreemptionWatcher` replaces so that SIGINT and runs without jax.distributed
behave alike. The step schedule is a modulo, as orbax's `FixedIntervalPolicy`.
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
  """A save every `every_steps` steps and/or `every_secs` s (None: off)."""

  def __init__(
      self,
      every_steps: Optional[int] = None,
      every_secs: Optional[float] = None,
      time_fn: Callable[[], float] = time.monotonic,
  ):
    if every_steps is not None and every_steps < 1:
      raise ValueError(
          f'save_interval_steps={every_steps}: use a positive '
          'integer, or None for no step schedule.'
      )
    if every_secs is not None and every_secs <= 0:
      raise ValueError(
          f'save_interval_secs={every_secs}: use a positive '
          'number, or None to disable the time schedule.'
      )
    self._every_steps, self._every_secs = every_steps, every_secs
    self._time_fn = time_fn
    self.restart_clock()

  def restart_clock(self) -> None:
    """Counts the time schedule from now (after a save, after compiling)."""
    self._last_save_time = self._time_fn()

  def time_due(self) -> bool:
    """Whether `every_secs` have passed since the last save, on this clock.

    On several processes agree on it (`decide`) first: clocks differ, and every
    process must join a save or orbax's barrier hangs.
    """
    return (
        self._every_secs is not None
        and self._time_fn() - self._last_save_time >= self._every_secs
    )

  def due(self, step: int, *, time_due: Optional[bool] = None) -> bool:
    """Whether `step` is a multiple of `every_steps` or the time is due.

    `time_due` is the answer agreed across processes; None reads this clock on
    one process and leaves the clock out on several.
    """
    if time_due is None:
      time_due = jax.process_count() == 1 and self.time_due()
    return bool(time_due) or bool(
        self._every_steps and step % self._every_steps == 0
    )


class PreemptionWatcher:
  """Turns SIGTERM / SIGINT into a flag (`requested`) the training loop polls.

  The first signal only sets the flag; after a first SIGINT the previous
  handler is back, so a second Ctrl-C still interrupts. Handlers are restored
  on exit; outside the main thread the watcher is inactive (with a warning).
  A signal may reach only some hosts: agree with `decide` before saving.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self._signals = tuple(signals)
    self._previous = {}
    self._signal_name = None

  @property
  def requested(self) -> bool:
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
      logging.warning(
          'Received %s: will checkpoint and stop after this step.', name
      )
    if signum == signal.SIGINT:
      previous = _restorable(self._previous[signal.SIGINT])
      if previous is signal.SIG_IGN:
        # An ignored SIGINT would make a second Ctrl-C a no-op; use Python's
        # default (KeyboardInterrupt) so the user can always stop the process.
        previous = signal.default_int_handler
      signal.signal(signal.SIGINT, previous)

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      logging.warning(
          'PreemptionWatcher entered outside the main thread: '
          'signal handlers not installed, preemption not watched.'
      )
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
  """What every process does after a step (collectives: exchanges, 0|1)."""

  preempt: bool
  time_due: bool
  collectives: int


def decide(watcher: PreemptionWatcher, ckpt, sync: bool) -> Decision:
  """Agrees on preemption and the checkpoint clock across processes.

  One process: the flag and the clock, every step, no communication. Several:
  at `sync` steps (logging steps, the same on every process) one all-gather of
  [signal received, clock due]: preempt when any process got a signal, save on
  process 0's clock; other steps neither preempt nor save on the clock.
  """
  if jax.process_count() == 1:
    return Decision(watcher.requested, ckpt.time_due(), 0)
  if not sync:
    return Decision(False, False, 0)
  flags = np.asarray([watcher.requested, ckpt.time_due()], np.int32)
  gathered = np.asarray(multihost_utils.process_allgather(flags)).reshape(-1, 2)
  return Decision(bool(gathered[:, 0].max()), bool(gathered[0, 1]), 1)
