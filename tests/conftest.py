"""Test-wide setup: 8 fake CPU devices, quiet TensorFlow, fast-failing JAX.

XLA_FLAGS must be set before jax is first imported; conftest.py is imported by
pytest before any test module, so every test (and every pmapped path) sees 8
CPU devices, and compiles at LLVM -O2 (tests/xla_env.py says why).
Single-device code still runs on device 0.
"""

import os
import pathlib

import xla_env  # tests/xla_env.py  # pylint: disable=g-bad-import-order

# Idempotent: pytest-xdist workers inherit the controller's environment.
os.environ['XLA_FLAGS'] = xla_env.xla_flags(8, os.environ.get('XLA_FLAGS', ''))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Identical programs (the same tiny config in several tests and in the
# subprocesses they start) compile once per machine.
os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR', '/tmp/byol_jax_test_jax_cache'
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
# Decoded image folders (byol_jax/data/folder.py) are cached under
# $XDG_CACHE_HOME: the tests' caches stay out of the user's ~/.cache.
os.environ.setdefault('XDG_CACHE_HOME', '/tmp/byol_jax_test_cache')

import pytest  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
CIFAR_TARBALL = SHARED / 'data' / 'cifar10-jpg' / 'cifar10-jpg.tar.gz'


@pytest.fixture(scope='session')
def cifar10_jpg_dir():
  """The CIFAR-10 JPEG folders unpacked once per machine, or a skip."""
  if not CIFAR_TARBALL.exists():
    pytest.skip(
        f'needs ../shared/data/cifar10-jpg beside the repo '
        f'(looked for {CIFAR_TARBALL}); absent on this machine'
    )
  import subprocess  # pylint: disable=g-import-not-at-top

  dest = os.environ.get('BYOL_CIFAR10_DIR', '/tmp/byol_jax_cifar10-jpg')
  out = subprocess.run(
      ['bash', str(CIFAR_TARBALL.parent / 'unpack.sh'), dest],
      check=True,
      capture_output=True,
      text=True,
  )
  return pathlib.Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='session')
def jit_o0():
  """jit_o0(fn, *args): fn(*args) compiled at XLA's optimisation level 0.

  jit_o0.compile(fn, *args) gives the compiled program instead, to call on
  other arguments of the same shapes. fn is jitted, or compiled as it is when
  it is already a jitted or pmapped program (a parallel.device_program such
  as experiment.pmap_update's step; its donated arguments stay donated). One
  process only: a pmapped program's lower().compile() takes process-local
  arrays.

  For tests that check a property holding for any parameters and at any
  optimisation level (equal results on 8 devices and 1, batch independence,
  the EMA relation, views in one batch): their initial parameters and the
  programs compared, at tiny batches where run time is nothing next to
  compile time. Measured against the suite's level 2 (tests/xla_env.py):
  test_views, test_training and test_in_memory took 196 CPU-s with only
  their inits at level 0 and 163 with the compared programs at level 0 too
  (d033ee2: `JAX_COMPILATION_CACHE_DIR=$(mktemp -d) /usr/bin/time python -m
  pytest -q -p no:cacheprovider <those modules>`).
  The tiny GN+WS step compiles in 5.0 s at level 0 (6.2-6.4 s at level 2)
  but runs 7x slower (benchmarks/README.md, "Compiling at LLVM -O2"). Values
  differ from other levels' in the last bits. Never for what a run computes,
  nor for tests whose thresholds depend on where training starts.
  """
  return _JitO0()


class _JitO0:
  """conftest's jit_o0: call it, or `.compile(fn, *args)` for the program."""

  def compile(self, fn, *args):
    """fn compiled at level 0 for arguments shaped like args (reusable)."""
    import jax  # pylint: disable=g-import-not-at-top

    program = fn if hasattr(fn, 'lower') else jax.jit(fn)
    return program.lower(*args).compile(
        compiler_options={'xla_backend_optimization_level': 0}
    )

  def __call__(self, fn, *args):
    return self.compile(fn, *args)(*args)


# The longest test (several minutes: a slice of the tiny Table 2 in a
# subprocess) goes first, so that pytest-xdist runs it beside the others
# rather than alone at the end of the run.
_LONGEST = (
    'tests/results/test_tiny_scale.py::'
    'test_quickstart_and_tiny_table2_bn_learn_without_collapse'
)


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.nodeid != _LONGEST)  # stable sort


def pytest_runtest_teardown(item, nextitem):
  """After a test module's last test, drops JAX's compiled executables.

  A pytest-xdist worker otherwise keeps every executable of every test it ran
  (thousands of small eager ones): measured on tests/methods, tests/models and
  three data/loss modules in one process, peak RSS 4.5 GB, and 5.4 GB for a
  worker of the whole suite with the 11.9 GB peak of the machine. Under a
  memory-hungry neighbour the kernel's OOM killer then picks the largest
  process, a worker, whose SIGKILL pytest-xdist reports as only "node down:
  Not properly terminated" (nothing can print on SIGKILL). Cleared
  per module: peak 2.8 GB, and no slower (252 s vs 265 s), since programs a
  later module needs come back from the persistent compilation cache.
  (Measured with `/usr/bin/time -v python -m pytest -q tests/methods
  tests/models tests/test_losses.py tests/data/test_in_memory.py
  tests/test_augment.py`, empty JAX_COMPILATION_CACHE_DIR, with and
  without this hook.)
  """
  if nextitem is None or nextitem.module is not item.module:
    import gc  # pylint: disable=g-import-not-at-top

    import jax  # pylint: disable=g-import-not-at-top

    jax.clear_caches()
    gc.collect()
