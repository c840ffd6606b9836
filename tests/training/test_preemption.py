"""byol_jax/training/preemption.py (its use: test_pretrain_loop.py)."""

import os
import signal
import time

import pytest

from byol_jax.training import preemption


def test_preemption_watcher_sigterm_sets_flag():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.PreemptionWatcher() as watcher:
    assert not watcher.requested and watcher.signal_name is None
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # Python runs handlers between bytecodes.
    assert watcher.requested and watcher.signal_name == 'SIGTERM'
    os.kill(os.getpid(), signal.SIGTERM)  # A repeat is still just a flag.
    assert watcher.signal_name == 'SIGTERM'
  assert signal.getsignal(signal.SIGTERM) is before


def test_preemption_watcher_second_sigint_interrupts():
  before = signal.getsignal(signal.SIGINT)
  with preemption.PreemptionWatcher() as watcher:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)
    assert watcher.signal_name == 'SIGINT'
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1.0)
  assert signal.getsignal(signal.SIGINT) is before
