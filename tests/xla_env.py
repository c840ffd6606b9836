"""XLA_FLAGS of the test suite, for pytest's processes and the ones tests start.

tests/conftest.py sets XLA_FLAGS to `xla_flags(8)` before jax is imported:
8 fake CPU devices (the pmapped paths) and TEST_FLAGS. A test that starts a
subprocess with another device count passes `xla_flags(n)`, which keeps
TEST_FLAGS; a test that must run a command exactly as a user types it (the
README's quick start) passes no XLA_FLAGS at all.

TEST_FLAGS: LLVM optimisation level 2 instead of XLA's default 3. The
programs are the same HLO and the same kernels; only LLVM's passes over the
generated loops differ, so values can differ in the last bits. Most of the
suite's CPU time is XLA compiling small programs once, which level 2 makes
cheaper; a compiled step runs about 6% slower. Measured on this project's
2-core CI-size VM (Intel Xeon, jax 0.10.2), empty compilation caches:
  * tests/methods/test_views.py, tests/methods/test_training.py and
    test_runner's every-config test: 320 and 312 CPU-s at the default level,
    249 and 252 at level 2 (level 1: 251), with `JAX_COMPILATION_CACHE_DIR=
    $(mktemp -d) /usr/bin/time python -m pytest -q -p no:cacheprovider <those
    tests>` and XLA_FLAGS with or without the flag;
  * the tiny step (ResNet-10 x1/4, 16 px, batch 256) compiles in 8.0 / 7.0 s
    (BN / GN+WS) at the default level and 7.1 / 6.3 s at level 2, and runs
    in 583 / 730 ms vs 622 / 767 ms (benchmarks/README.md, "The test suite's
    cost").
"""
import os

DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'
TEST_FLAGS = ('--xla_backend_optimization_level=2',)


def xla_flags(devices: int, base: str = '') -> str:
  """XLA_FLAGS for a CPU process with `devices` fake devices and TEST_FLAGS.

  Args:
    devices: the process's CPU device count.
    base: flags to keep (any device count in them is replaced, and a
      TEST_FLAGS flag they already set keeps their value); default none.

  Returns:
    A space-separated XLA_FLAGS value.
  """
  kept = [f for f in base.split() if not f.startswith(DEVICE_COUNT_FLAG)]
  names = {f.split('=')[0] for f in kept}  # a flag already set is kept
  kept += [f for f in TEST_FLAGS if f.split('=')[0] not in names]
  return ' '.join(kept + [f'{DEVICE_COUNT_FLAG}={devices}'])


def subprocess_env(devices: int, **extra) -> dict:
  """os.environ with XLA_FLAGS = xla_flags(devices) and `extra` set."""
  env = dict(os.environ, **extra)
  env['XLA_FLAGS'] = xla_flags(devices, env.get('XLA_FLAGS', ''))
  return env
