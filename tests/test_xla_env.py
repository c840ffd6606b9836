"""tests/xla_env.py: the suite's XLA_FLAGS, here and in subprocesses."""

import os

import pytest
import xla_env  # tests/xla_env.py


def test_this_process_has_8_devices_and_the_test_flags():
  flags = os.environ['XLA_FLAGS'].split()
  assert f'{xla_env.DEVICE_COUNT_FLAG}=8' in flags
  assert set(xla_env.TEST_FLAGS) <= set(flags)
  # Idempotent: an xdist worker re-applies it to the controller's value.
  assert (
      xla_env.xla_flags(8, os.environ['XLA_FLAGS']) == os.environ['XLA_FLAGS']
  )


def test_device_count_replaced_other_flags_and_a_users_level_kept():
  assert xla_env.xla_flags(2) == (
      '--xla_backend_optimization_level=2 '
      '--xla_force_host_platform_device_count=2'
  )
  got = xla_env.xla_flags(
      1,
      ' --xla_dump_to=/tmp/d '
      '--xla_force_host_platform_device_count=8 '
      '--xla_backend_optimization_level=3 ',
  )
  assert got.split() == [
      '--xla_dump_to=/tmp/d',
      '--xla_backend_optimization_level=3',
      '--xla_force_host_platform_device_count=1',
  ]


def test_subprocess_env_keeps_the_flags_with_its_own_device_count():
  env = xla_env.subprocess_env(4, JAX_PLATFORMS='cpu')
  assert env['JAX_PLATFORMS'] == 'cpu'
  assert env['XLA_FLAGS'] == xla_env.xla_flags(4, os.environ['XLA_FLAGS'])
  assert env['XLA_FLAGS'].endswith(f'{xla_env.DEVICE_COUNT_FLAG}=4')
  env = xla_env.subprocess_env(1, XLA_FLAGS='--xla_dump_to=/tmp/d')
  assert env['XLA_FLAGS'].split()[0] == '--xla_dump_to=/tmp/d'


def test_a_flags_file_is_refused():
  with pytest.raises(ValueError, match="XLA_FLAGS='/tmp/flags' names a flags"):
    xla_env.xla_flags(8, '/tmp/flags')
