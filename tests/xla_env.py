"""XLA_FLAGS of the test suite, for pytest's processes and the ones tests start.

tests/conftest.py sets XLA_FLAGS to `xla_flags(8, ...)` before jax is
imported: 8 fake CPU devices (the pmapped paths) and TEST_FLAGS. A test that
starts a subprocess with another device count passes it
`subprocess_env(n)`, which keeps TEST_FLAGS; a test that must run a command
exactly as a user types it (the README's quick start) passes no XLA_FLAGS at
all. Only processes with the same device count and the same XLA_FLAGS share
programs through the persistent compilation cache.

TEST_FLAGS: LLVM optimisation level 2 instead of XLA's default 3. The
programs are the same HLO and the same kernels; only LLVM's passes over the
generated loops differ, so values can differ in the last bits. Most of the
suite's CPU time is XLA compiling small programs once, which level 2 makes
cheaper; a compiled step runs about 6% slower. Measured on this project's
2-core CI-size VM (Intel Xeon, jax 0.10.2), empty compilation caches:
  * tests/methods/test_views.py, tests/methods/test_training.py and
    test_runner's every-config test, on the code of a407439 with and
    without the flag: 320 and 312 CPU-s (two runs) at the default level,
    249 and 252 at level 2 (level 1: 251), with
    `JAX_COMPILATION_CACHE_DIR=$(mktemp -d) /usr/bin/time python -m pytest
    -q -p no:cacheprovider <those tests>`;
  * the tiny step (ResNet-10 x1/4, 16 px, batch 256) compiles in 8.0-8.1 /
    6.9-7.2 s (BN / GN+WS) at the default level and 7.1-7.2 / 6.2-6.4 s at
    level 2, and runs in 583 / 724-737 ms vs 619-624 / 759-775 ms
    (benchmarks/README.md, "Compiling at LLVM -O2");
  * the whole suite (python -m benchmarks.suite_profile) took 1,315 CPU-s at
    a407439, 1,437 at 200b210 before it (not all of the difference is the
    flag).
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

  Raises:
    ValueError: base does not start with '-' (XLA would read it as the name
      of a flags file, which this function cannot extend).
  """
  base = base.strip()
  if base and not base.startswith('-'):
    raise ValueError(
        f'XLA_FLAGS={base!r} names a flags file; tests need '
        'flags (--name=value): unset XLA_FLAGS or pass flags.'
    )
  kept = [f for f in base.split() if not f.startswith(DEVICE_COUNT_FLAG)]
  names = {f.split('=')[0] for f in kept}  # a flag already set is kept
  kept += [f for f in TEST_FLAGS if f.split('=')[0] not in names]
  return ' '.join(kept + [f'{DEVICE_COUNT_FLAG}={devices}'])


def subprocess_env(devices: int, **extra) -> dict:
  """The environment of a subprocess with `devices` CPU devices.

  Args:
    devices: the subprocess's CPU device count.
    **extra: variables to set (strings). An XLA_FLAGS among them is the base
      that xla_flags extends instead of this process's XLA_FLAGS.

  Returns:
    A copy of os.environ with `extra` set and XLA_FLAGS =
    xla_flags(devices, <this process's or extra's XLA_FLAGS>).
  """
  env = dict(os.environ, **extra)
  env['XLA_FLAGS'] = xla_flags(devices, env.get('XLA_FLAGS', ''))
  return env
