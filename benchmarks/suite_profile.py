r"""What the test suite spends its time on, from empty caches.

Runs the README's test command (`python -m pytest -q -n 2 tests`, or the
given paths and workers) with benchmarks/_suite_plugin.py in every worker and
empty compilation, decoded-image and CIFAR-10 caches in a temporary folder,
as `.ci/run` on a fresh machine. Reports:

  * the suite's wall time and the CPU seconds of the whole pytest process
    tree (user + system, workers and every subprocess they waited for), and
    their ratio, the cores kept busy;
  * per test (setup, call and teardown): wall, CPU of its own process, CPU of
    the subprocesses it ran, the XLA compilations and persistent-cache loads
    in its own process with their seconds; per test module, the sums. Sorted
    by CPU (own + subprocesses): on a CPU-bound suite that, not wall time,
    is what each test costs the others.

    python -m benchmarks.suite_profile                      # the whole suite
    python -m benchmarks.suite_profile --paths tests/methods --workers 0 \
        --no_write

Writes `benchmarks/results/suite_profile-<cpu>-<date>.json` (the modules and
the `--top` tests) unless --no_write. The numbers are the machine's at that
moment: compare runs made on one machine, one after another.
"""

import collections
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from absl import flags

from benchmarks import _cli
from benchmarks import _results

REPO = _results.REPO
# The caches .ci/run empties (tests/conftest.py's defaults live in /tmp).
CACHE_VARS = ('JAX_COMPILATION_CACHE_DIR', 'XDG_CACHE_HOME', 'BYOL_CIFAR10_DIR')


def pytest_command(paths, workers: int) -> list:
  """The pytest command line with the plugin.

  Args:
    paths: pytest arguments (test files or folders).
    workers: pytest-xdist workers; 0 runs the tests in one process.

  Returns:
    The argv list, starting with this Python interpreter.
  """
  cmd = [
      sys.executable,
      '-m',
      'pytest',
      '-q',
      '-p',
      'no:cacheprovider',
      '-p',
      'benchmarks._suite_plugin',
  ]
  if workers:
    cmd += ['-n', str(workers)]
  return cmd + list(paths)


def summarize(rows, top: int) -> dict:
  """Totals, per-module sums and the `top` tests by CPU.

  Args:
    rows: the plugin's per-test dicts (test, wall_s, cpu_self_s,
      cpu_children_s, compiles, cache_hits, compile_s), from every worker.
    top: how many tests to keep, the most CPU first.

  Returns:
    dict(tests, modules, top_tests): the count of tests, and lists of rows
    with `cpu_s` = cpu_self_s + cpu_children_s, sorted by it.
  """
  keys = (
      'wall_s',
      'cpu_self_s',
      'cpu_children_s',
      'compiles',
      'cache_hits',
      'compile_s',
  )
  modules = collections.defaultdict(lambda: dict.fromkeys(keys, 0))
  tests = []
  for row in rows:
    row = dict(row, cpu_s=round(row['cpu_self_s'] + row['cpu_children_s'], 3))
    tests.append(row)
    module = modules[row['test'].split('::')[0]]
    for key in keys:
      module[key] += row[key]
  module_rows = [
      dict(
          module=name,
          cpu_s=round(m['cpu_self_s'] + m['cpu_children_s'], 3),
          **{k: round(v, 3) for k, v in m.items()},
      )
      for name, m in modules.items()
  ]
  by_cpu = lambda r: -r['cpu_s']
  return dict(
      tests=len(tests),
      modules=sorted(module_rows, key=by_cpu),
      top_tests=sorted(tests, key=by_cpu)[:top],
  )


def git_commit() -> str:
  """HEAD's hash, '+dirty' when tracked files differ from it; '' outside git."""
  try:
    head = subprocess.run(
        ['git', 'rev-parse', 'HEAD'],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = (
        subprocess.run(
            ['git', 'diff', '--quiet', 'HEAD'], cwd=REPO, check=False
        ).returncode
        != 0
    )
  except (OSError, subprocess.CalledProcessError):
    return ''
  return head + ('+dirty' if dirty else '')


def print_report(result: dict, rows_shown: int = 15) -> None:
  """Prints the totals, then the first `rows_shown` modules and tests.

  Args:
    result: run()'s result dict.
    rows_shown: rows of each table.
  """
  print(
      f'{result["tests"]} tests in {result["wall_s"]:.0f} s wall, '
      f'{result["cpu_s"]:.0f} CPU-s ({result["cores_busy"]:.2f} cores busy)'
      f' on {result["device"]}; {result["pytest_summary"]}'
  )
  header = (
      f'{"CPU s":>7} {"own":>7} {"subproc":>7} {"wall s":>7} '
      f'{"compiles":>8} {"cached":>6} {"compile s":>9}  '
  )
  for title, key, name in (
      ('Modules', 'modules', 'module'),
      ('Tests', 'top_tests', 'test'),
  ):
    print(f'\n{title} (most CPU first):\n{header}{name}')
    for r in result[key][:rows_shown]:
      print(
          f'{r["cpu_s"]:7.1f} {r["cpu_self_s"]:7.1f} '
          f'{r["cpu_children_s"]:7.1f} {r["wall_s"]:7.1f} '
          f'{r["compiles"]:8d} {r["cache_hits"]:6d} {r["compile_s"]:9.1f}  '
          f'{r[name]}'
      )


def define_flags(flag_values) -> None:
  """Defines the command line's flags on flag_values (see _cli)."""
  fv = dict(flag_values=flag_values)
  _cli.define_csv(
      'paths', 'tests', 'test paths (pytest arguments)', flag_values
  )
  flags.DEFINE_integer(
      'workers', 2, 'pytest-xdist workers (0: none)', lower_bound=0, **fv
  )
  flags.DEFINE_integer(
      'top', 40, 'tests kept in the results file', lower_bound=1, **fv
  )
  flags.DEFINE_bool(
      'warm',
      False,
      "keep conftest.py's default caches in " '/tmp instead of empty ones',
      **fv,
  )
  flags.DEFINE_bool('no_write', False, 'write no results file', **fv)
  flags.DEFINE_string(
      'out', str(_results.RESULTS_DIR), 'folder of the results file', **fv
  )


def main(argv=None) -> dict:
  """Profiles the suite; writes the results file unless --no_write.

  Args:
    argv: command-line arguments (default sys.argv[1:]).

  Returns:
    The result dict (see the module docstring); raises RuntimeError when
    pytest fails or runs no test.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  return run(
      _cli.parse(define_flags, argv, program='benchmarks.suite_profile'), argv
  )


def run(args, argv) -> dict:
  """main's body: args the parsed flags, argv the command line behind them."""
  cmd = pytest_command(args.paths, args.workers)
  with tempfile.TemporaryDirectory(prefix='suite_profile_') as tmp:
    env = dict(os.environ, SUITE_PROFILE_DIR=str(pathlib.Path(tmp, 'rows')))
    os.mkdir(env['SUITE_PROFILE_DIR'])
    if not args.warm:
      env.update({v: str(pathlib.Path(tmp, v.lower())) for v in CACHE_VARS})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0:
      raise RuntimeError(
          f'pytest exited {proc.returncode}:\n'
          + '\n'.join(lines[-30:])
          + '\n'
          + proc.stderr[-3000:]
      )
    rows = []
    for path in sorted(pathlib.Path(env['SUITE_PROFILE_DIR']).glob('*.json')):
      rows += json.loads(path.read_text())
  if not rows:
    raise RuntimeError(
        'no test was profiled (is benchmarks/_suite_plugin.py '
        'importable from the repository root?): '
        + (lines[-1] if lines else proc.stderr[-500:])
    )
  cpu = sum(
      getattr(after, f) - getattr(before, f) for f in ('ru_utime', 'ru_stime')
  )
  result = dict(
      benchmark='suite_profile',
      command='python -m benchmarks.suite_profile ' + ' '.join(argv),
      pytest_command=' '.join(['python'] + cmd[1:]),
      device=f'cpu: {_results.cpu_name()}, {_results.cpu_cores()} cores',
      date=_results.today(),
      commit=git_commit(),
      caches='warm (/tmp)' if args.warm else 'empty',
      pytest_summary=lines[-1] if lines else '',
      wall_s=round(wall, 1),
      cpu_s=round(cpu, 1),
      cores_busy=round(cpu / wall, 2),
      **summarize(rows, args.top),
  )
  print_report(result)
  if not args.no_write:
    slug = (
        f'cpu-{_results.slug(_results.cpu_name())}-'
        f'{_results.cpu_cores()}cores'
    )
    path = _results.write_json(
        _results.results_path('suite_profile', slug, out_dir=args.out), result
    )
    print(f'Wrote {path}')
  return result


if __name__ == '__main__':
  _cli.main_run(define_flags, run)
