"""`python -m byol_jax.report`: every error is one line, exit code 2.

Each case breaks a copy of the bn fixture run (tests/fixtures/report/bn) or
a flag, runs the command and checks: exit code 2, one line on stderr naming
the problem, no traceback, no report written.
"""

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BN = REPO / 'tests' / 'fixtures' / 'report' / 'bn'


def _write(name, text):
  def breaks(run):
    path = run / name
    path.unlink()
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)

  return breaks


def _directory_named(name):
  def breaks(run):
    (run / name).unlink()
    (run / name).mkdir()

  return breaks


def _report(*args):
  return subprocess.run(
      [sys.executable, '-m', 'byol_jax.report', *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )


# (id, how the run is broken, the flags ({run}, {out}), message)
CASES = [
    (
        'missing-workdir',
        None,
        ['--workdirs={run}/nope', '--out={out}'],
        'nope is not a directory',
    ),
    (
        'not-a-run',
        None,
        ['--workdirs={run}/checkpoints', '--out={out}'],
        'metrics.jsonl does not exist',
    ),
    (
        'workdir-is-a-file',
        None,
        ['--workdirs={run}/config.json', '--out={out}'],
        'is not a directory',
    ),
    (
        'no-runs',
        None,
        ['--workdirs=', '--out={out}'],
        'no run directories: pass --workdirs=',
    ),
    (
        'no-workdirs-flag',
        None,
        ['--out={out}'],
        'Flag --workdirs must have a value',
    ),
    ('no-out-flag', None, ['--workdirs={run}'], 'Flag --out must have a value'),
    (
        'empty-out',
        None,
        ['--workdirs={run}', '--out='],
        "--out='' is not a directory",
    ),
    (
        'out-is-a-file',
        None,
        ['--workdirs={run}', '--out={run}/config.json'],
        "config.json' is not a directory",
    ),
    (
        'out-unwritable',
        None,
        ['--workdirs={run}', '--out=/proc/byol_report'],
        'cannot write to --out=/proc/byol_report',
    ),
    (
        'unknown-flag',
        None,
        ['--workdirs={run}', '--out={out}', '--titel=x'],
        "Unknown command line flag 'titel'",
    ),
    (
        'positional',
        None,
        ['--workdirs={run}', '--out={out}', 'extra'],
        "unexpected arguments ['extra']",
    ),
    (
        'corrupt-config',
        _write('config.json', '{"method": '),
        ['--workdirs={run}', '--out={out}'],
        'config.json cannot be read as JSON',
    ),
    (
        'config-not-utf8',
        _write('config.json', b'\xff\xfe{}'),
        ['--workdirs={run}', '--out={out}'],
        'config.json cannot be read as JSON',
    ),
    (
        'config-unreadable',
        _directory_named('config.json'),
        ['--workdirs={run}', '--out={out}'],
        'Is a directory',
    ),
    (
        'results-not-an-object',
        _write('eval_results.json', '[0.5]'),
        ['--workdirs={run}', '--out={out}'],
        'eval_results.json holds list, not a JSON object',
    ),
    (
        'results-not-a-number',
        _write('eval_results.json', '{"top1": "high"}'),
        ['--workdirs={run}', '--out={out}'],
        "top1='high' is not a number",
    ),
    (
        'done-corrupt',
        _write('pretrain_done.json', '{'),
        ['--workdirs={run}', '--out={out}'],
        'pretrain_done.json cannot be read as JSON',
    ),
    (
        'metrics-corrupt-line',
        _write('metrics.jsonl', 'garbage\n{"step": 2}\n'),
        ['--workdirs={run}', '--out={out}'],
        'metrics.jsonl:1 is not valid JSON',
    ),
    (
        'metrics-without-step',
        _write('metrics.jsonl', '{"loss": 1.0}\n'),
        ['--workdirs={run}', '--out={out}'],
        "row 1 ({'loss': 1.0}) has no " 'integer "step"',
    ),
    (
        'metrics-not-a-number',
        _write('metrics.jsonl', '{"step": 1, "loss": "x"}\n'),
        ['--workdirs={run}', '--out={out}'],
        "row 1: loss='x' is not a number",
    ),
    (
        'metrics-empty',
        _write('metrics.jsonl', ''),
        ['--workdirs={run}', '--out={out}'],
        'has no metric rows',
    ),
    (
        'metrics-unreadable',
        _directory_named('metrics.jsonl'),
        ['--workdirs={run}', '--out={out}'],
        'metrics.jsonl cannot be read',
    ),
]


@pytest.mark.parametrize(
    'breaks,args,message', [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_errors_are_one_line_exit_2(tmp_path, breaks, args, message):
  run, out = tmp_path / 'bn', tmp_path / 'out'
  shutil.copytree(BN, run)
  (run / 'checkpoints').mkdir()
  if breaks:
    breaks(run)
  proc = _report(*(a.format(run=run, out=out) for a in args))
  assert proc.returncode == 2, proc.stderr
  assert len(proc.stderr.splitlines()) == 1, proc.stderr
  assert message in proc.stderr and 'Traceback' not in proc.stderr
  assert proc.stdout == '' and not out.exists()


def test_a_good_run_is_reported(tmp_path):
  proc = _report(f'--workdirs={BN}', f'--out={tmp_path}', '--title=T')
  assert proc.returncode == 0, proc.stderr
  assert (tmp_path / 'report.md').read_text().startswith('# T\n')
  assert '| bn | BYOL enc=bn proj=bn pred=bn | 74.3 |' in proc.stdout


def test_a_null_metric_counts_as_absent(tmp_path):
  """_number takes null as absent; the final value then skips that row."""
  from byol_jax.results import runs  # pylint: disable=g-import-not-at-top

  run = tmp_path / 'bn'
  shutil.copytree(BN, run)
  rows = (run / 'metrics.jsonl').read_text()
  last = runs.load_run(run)['final']['loss']
  (run / 'metrics.jsonl').write_text(rows + '{"step": 999999, "loss": null}\n')
  assert runs.load_run(run)['final']['loss'] == last is not None


@pytest.mark.parametrize(
    'module, usage',
    [
        ('byol_jax.report', 'python -m byol_jax.report --workdirs='),
        ('byol_jax.reproduce', 'python -m byol_jax.reproduce --table=2'),
    ],
)
def test_help_through_the_shim_shows_the_usage(module, usage):
  """`python -m byol_jax.<x> --help` prints results/<x>.py's docstring."""
  proc = subprocess.run(
      [sys.executable, '-m', module, '--help'],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert usage in proc.stdout, proc.stdout[-2000:]  # (absl's exit code 1)
