"""A pytest-xdist worker that dies prints why: the C++ message and the stack.

The suite's pytest.ini sets --capture=sys, so a fatal message written by C++
(XLA's LOG(FATAL) before abort()) to file descriptor 2 reaches the console,
and pytest's faulthandler prints the Python stack of the dying worker. This
runs pytest, with the repository's pytest.ini, on a test that does exactly
that in a worker.
"""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

_DYING_TEST = """
import os

def test_dies_like_xla():
    os.write(2, b"F0000 fake_xla.cc:1] Check failed: fatal message\\n")
    os.abort()
"""


def test_a_crashing_worker_prints_its_fatal_message_and_stack(tmp_path):
  pytest.importorskip('xdist')
  (tmp_path / 'test_dying.py').write_text(_DYING_TEST)
  out = subprocess.run(
      [
          sys.executable,
          '-m',
          'pytest',
          '-c',
          str(REPO / 'pytest.ini'),
          '--rootdir',
          str(tmp_path),
          '-p',
          'no:cacheprovider',
          '-q',
          '-n',
          '1',
          str(tmp_path / 'test_dying.py'),
      ],
      cwd=tmp_path,
      capture_output=True,
      text=True,
      timeout=300,
  )
  text = out.stdout + out.stderr
  assert out.returncode == 1, text
  assert 'crashed while running' in text, text
  assert 'Check failed: fatal message' in text, text
  assert 'Fatal Python error: Aborted' in text, text
  assert 'in test_dies_like_xla' in text, text  # faulthandler's stack
