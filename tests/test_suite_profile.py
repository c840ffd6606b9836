"""benchmarks/suite_profile.py: per-test CPU, subprocess CPU and compiles.

The profiler runs pytest (no pytest-xdist) on a three-test file written here,
with empty caches: one test burns CPU in a subprocess, the next compiles a
program in its own process, the last loads that program back from the
persistent compilation cache; each must be charged with exactly its own.
"""

import pytest

from benchmarks import suite_profile

PROFILED = """
import subprocess, sys
import jax, jax.numpy as jnp

jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)

def f(x):
  return jnp.sin(x) * 2.

def test_child_cpu():
  subprocess.run([sys.executable, '-c', 'sum(i * i for i in range(4 * 10**6))'],
                 check=True)

def test_compiles():
  assert float(jax.jit(f)(jnp.float32(1.))) > 0.

def test_cache_hit():
  jax.clear_caches()
  assert float(jax.jit(f)(jnp.float32(1.))) > 0.
"""


def test_each_test_is_charged_its_compiles_and_its_subprocesses(tmp_path):
  path = tmp_path / 'test_profiled.py'
  path.write_text(PROFILED)
  result = suite_profile.main(
      ['--paths', str(path), '--workers', '0', '--no_write']
  )
  assert result['tests'] == 3 and '3 passed' in result['pytest_summary']
  assert result['caches'] == 'empty' and result['wall_s'] > 0.0
  if (suite_profile.REPO / '.git').exists():  # the code it measured
    assert len(result['commit'].split('+')[0]) == 40
  rows = {r['test'].split('::')[-1]: r for r in result['top_tests']}
  child, compiles, hit = (
      rows[n] for n in ('test_child_cpu', 'test_compiles', 'test_cache_hit')
  )
  # The subprocess is the first test's alone: the next ones start from zero.
  assert child['cpu_children_s'] > 0.1 and child['compiles'] == 0
  assert child['cpu_self_s'] < child['cpu_children_s']
  assert compiles['cpu_children_s'] == hit['cpu_children_s'] == 0.0
  assert child['cpu_s'] == pytest.approx(
      child['cpu_self_s'] + child['cpu_children_s'], abs=1e-3
  )
  # A compile, then the same program loaded from the cache: not a compile.
  assert compiles['compiles'] >= 1 and compiles['cache_hits'] == 0
  assert compiles['compile_s'] > 0.0 and compiles['cpu_self_s'] > 0.0
  # (jit(f) and the eager conversion of its argument.)
  assert hit['cache_hits'] == compiles['compiles'] and hit['compiles'] == 0
  # Sorted by CPU; the module row sums its tests.
  assert [r['cpu_s'] for r in result['top_tests']] == sorted(
      (r['cpu_s'] for r in result['top_tests']), reverse=True
  )
  (module,) = result['modules']
  for key in ('compiles', 'cache_hits'):
    assert module[key] == sum(r[key] for r in rows.values())
  assert module['cpu_children_s'] == pytest.approx(
      sum(r['cpu_children_s'] for r in rows.values()), abs=1e-3
  )
  # The whole process tree's CPU covers the tests' own.
  assert result['cpu_s'] >= child['cpu_children_s']


def test_a_failing_suite_is_an_error_not_a_profile(tmp_path):
  path = tmp_path / 'test_fails.py'
  path.write_text('def test_fails():\n  assert 1 == 2\n')
  with pytest.raises(RuntimeError, match='pytest exited 1'):
    suite_profile.main(['--paths', str(path), '--workers', '0', '--no_write'])
