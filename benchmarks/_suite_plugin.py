"""pytest plugin behind benchmarks/suite_profile.py: each test's cost.

Loaded with `-p benchmarks._suite_plugin` in every pytest-xdist worker; a
no-op unless SUITE_PROFILE_DIR is set. Per test (setup, call and teardown
together) it records:

  * wall_s: wall-clock seconds;
  * cpu_self_s: user + system CPU seconds of the test's own process;
  * cpu_children_s: those of the subprocesses it started and waited for
    (resource.RUSAGE_CHILDREN), e.g. a `python -m byol_jax.main` run;
  * compiles, cache_hits, compile_s: programs the test's own process
    compiled with XLA, programs it loaded from the persistent compilation
    cache instead, and the wall seconds of both (jax.monitoring: the
    backend-compile duration event, which also wraps a cache load, and the
    cache-hit event). Subprocesses' compiles are inside cpu_children_s, not
    counted here.

Caveats: a subprocess is charged to the test that waits for it (normally the
one that started it), and a background thread's CPU to the test running at
the time.

At the end of the session each process writes its rows to
$SUITE_PROFILE_DIR/<pid>.json.
"""

import json
import os
import resource
import time

import pytest

_ENV = 'SUITE_PROFILE_DIR'
_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
_CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'
_rows = []
# Compile-or-load events, their seconds, cache hits: this process, so far.
_compiles = [0, 0.0, 0]
_listening = []


def _on_duration(event, duration, **kwargs):
  del kwargs
  if event == _COMPILE_EVENT:
    _compiles[0] += 1
    _compiles[1] += duration


def _on_event(event, **kwargs):
  del kwargs
  if event == _CACHE_HIT_EVENT:
    _compiles[2] += 1


def _listen() -> None:
  """Registers the listeners once (jax is imported by conftest.py)."""
  if not _listening:
    import jax.monitoring  # pylint: disable=g-import-not-at-top

    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    jax.monitoring.register_event_listener(_on_event)
    _listening.append(True)


def _cpu(who) -> float:
  usage = resource.getrusage(who)
  return usage.ru_utime + usage.ru_stime


def _enabled() -> bool:
  return bool(os.environ.get(_ENV))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # pylint: disable=unused-argument
  """Wraps one test's setup, call and teardown (a hookwrapper)."""
  if not _enabled():
    yield
    return
  _listen()
  before = (
      time.perf_counter(),
      _cpu(resource.RUSAGE_SELF),
      _cpu(resource.RUSAGE_CHILDREN),
      *_compiles,
  )
  yield
  after = (
      time.perf_counter(),
      _cpu(resource.RUSAGE_SELF),
      _cpu(resource.RUSAGE_CHILDREN),
      *_compiles,
  )
  wall, cpu_self, cpu_children, events, compile_s, hits = (
      a - b for a, b in zip(after, before)
  )
  _rows.append(
      dict(
          test=item.nodeid,
          wall_s=round(wall, 3),
          cpu_self_s=round(cpu_self, 3),
          cpu_children_s=round(cpu_children, 3),
          compiles=int(events - hits),
          cache_hits=int(hits),
          compile_s=round(compile_s, 3),
      )
  )


def pytest_sessionfinish(session):  # pylint: disable=unused-argument
  if _enabled() and _rows:
    path = os.path.join(os.environ[_ENV], f'{os.getpid()}.json')
    with open(path, 'w') as f:
      json.dump(_rows, f)
