"""Preemption, and the checkpoint decision every process shares.

Not orbax's: its `ContinuousCheckpointingPolicy` exchanges between hosts at
every call (`decide`: at logging steps only), and its preemption policy needs
JAX's SIGTERM notifier (the watcher also takes SIGINT, without
jax.distributed).
"""

import signal
import threading
from typing import NamedTuple, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


class PreemptionWatcher:
  """SIGTERM / SIGINT -> a flag (`requested`); a second Ctrl-C interrupts."""

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self._signals, self._previous = tuple(signals), {}
    self.signal_name: Optional[str] = None  # the first signal's, 'SIGTERM'

  @property
  def requested(self) -> bool:
    return self.signal_name is not None

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name
      logging.warning(
          'Received %s: will checkpoint and stop after this step.',
          self.signal_name,
      )
    if signum == signal.SIGINT:
      previous = self._previous[signal.SIGINT] or signal.SIG_DFL
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
      # None: a handler installed outside Python.
      signal.signal(sig, previous or signal.SIG_DFL)
    self._previous = {}


class Decision(NamedTuple):
  """What every process does after a step; collectives: exchanges (0 or 1)."""

  preempt: bool
  time_due: bool
  collectives: int


def decide(watcher: PreemptionWatcher, ckpt, sync: bool) -> Decision:
  """Preemption and the checkpoint clock, agreed by all processes: at `sync`
  (logging) steps one all-gather of [signal, clock due]; preempt when any got
  a signal, save on process 0's clock."""
  if jax.process_count() == 1:
    return Decision(watcher.requested, ckpt.time_due(), 0)
  if not sync:
    return Decision(False, False, 0)
  flags = np.asarray([watcher.requested, ckpt.time_due()], np.int32)
  gathered = np.asarray(multihost_utils.process_allgather(flags)).reshape(-1, 2)
  return Decision(bool(gathered[:, 0].max()), bool(gathered[0, 1]), 1)
