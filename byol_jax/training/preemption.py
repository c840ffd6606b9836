"""Preemption, and the save decision every process shares (not orbax's: its
policies exchange at every call and need JAX's SIGTERM notifier)."""

import signal
import threading
from typing import Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


class PreemptionWatcher:
  """SIGTERM / SIGINT -> a flag (`requested`); a second Ctrl-C interrupts."""

  def __init__(self):
    self._previous = {}
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
        # Else a second Ctrl-C would be a no-op.
        previous = signal.default_int_handler
      signal.signal(signal.SIGINT, previous)

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      logging.warning(
          'PreemptionWatcher entered outside the main thread: '
          'signal handlers not installed, preemption not watched.'
      )
      return self
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      # None: a handler installed outside Python.
      signal.signal(sig, previous or signal.SIG_DFL)
    self._previous = {}


def decide(watcher, ckpt, sync: bool) -> tuple[bool, bool, int]:
  """(preempt, time_due, all-gathers: 0 or 1), the same on every process:
  exchanged at `sync` steps only (any process's signal, process 0's clock)."""
  if jax.process_count() == 1:
    return watcher.requested, ckpt.time_due(), 0
  if not sync:
    return False, False, 0
  flags = np.asarray([watcher.requested, ckpt.time_due()], np.int32)
  gathered = np.asarray(multihost_utils.process_allgather(flags)).reshape(-1, 2)
  return bool(gathered[:, 0].max()), bool(gathered[0, 1]), 1
