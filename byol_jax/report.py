"""Results tables (and their plots) from one or many run workdirs.

runs.py reads each workdir (config.json, metrics.jsonl, pretrain_done.json,
eval_results.json); this module renders the runs as a markdown table, the
paper's number beside ours (paper.py), and writes it with the plots of
plots.py.

Usage:

  python -m byol_jax.report --workdirs=/tmp/bn,/tmp/gnws,/tmp/nonorm \
      --out=/tmp/report --title='Table 2, tiny scale'

writes OUT/report.md (the table) and OUT/plots/{loss,collapse_std_projection,
collapse_std_representation,online_top1}.png, one line per run.
"""

import math
import sys
from typing import Optional, Sequence

from etils import epath

from byol_jax import paper
from byol_jax import plots as plots_lib
from byol_jax import runs as runs_lib
from byol_jax import writers

_DASH = '—'


def _fmt(x: Optional[float], fmt: str) -> str:
  if x is None:
    return _DASH
  if not math.isfinite(x):
    return str(x)  # 'nan' / 'inf': a diverged run stays visible.
  return format(x, fmt)


def _pct(x: Optional[float]) -> str:
  return _DASH if x is None else _fmt(100.0 * x, '.1f')


def format_duration(seconds: Optional[float]) -> str:
  """A duration for the table: 12 -> '12s', 754 -> '12m34s', 7380 -> '2h03m'.

  Args:
    seconds: the duration in seconds, or None (unknown).

  Returns:
    writers.format_duration's text; '—' for None.
  """
  return _DASH if seconds is None else writers.format_duration(seconds)


_COLUMNS = (
    'run',
    'variant',
    'paper top-1 (%)',
    'linear top-1 (%)',
    'random-init top-1 (%)',
    'kNN top-1 (%)',
    'random-init kNN (%)',
    'online top-1 (%)',
    'collapse std proj',
    'collapse std repr',
    'collapse: paper / ours',
    'final loss',
    'steps',
    'wall time',
)
# Our runs count as collapsed when the projection collapse statistic ends
# below this (the no-normalisation BYOL runs end at 0.000; healthy runs
# above 0.1).
COLLAPSE_STD_BELOW = 0.05


def collapse_cell(run: dict) -> str:
  """'paper / ours (agree)': each 'collapsed' or 'learns', or a dash.

  The paper's cell collapses when its top-1 is below
  paper.COLLAPSED_BELOW %; ours when the final projection collapse
  statistic is below COLLAPSE_STD_BELOW.

  Args:
    run: a runs.load_run() dict (reads 'paper_top1' and
      final['collapse_std_projection']).

  Returns:
    E.g. 'collapsed / collapsed (agree)', 'learns / collapsed (DIFFER)', or
    '— / learns' when the paper has no number.
  """
  theirs = paper.collapsed(run['paper_top1'])
  std = run['final']['collapse_std_projection']
  ours = None if std is None else std < COLLAPSE_STD_BELOW
  word = lambda c: _DASH if c is None else ('collapsed' if c else 'learns')
  cell = f'{word(theirs)} / {word(ours)}'
  if theirs is not None and ours is not None:
    cell += ' (agree)' if theirs == ours else ' (DIFFER)'
  return cell


def table_row(run: dict) -> list[str]:
  """The markdown-table cells of one run.

  Args:
    run: a runs.load_run() dict.

  Returns:
    One string per column of _COLUMNS: accuracies in percent with one
    decimal, collapse statistics with three, the loss with four, steps as
    'last/total', wall time from format_duration ('~' when estimated from
    file mtimes); '—' for a missing value.
  """
  final = run['final']
  knn = _pct(run['knn_top1'])
  if run['knn_top1'] is None and final['knn_top1'] is not None:
    knn = _pct(final['knn_top1']) + ' (monitor)'  # training-time kNN monitor.
  steps = str(run['last_step'])
  if run['total_steps']:
    steps += f'/{run["total_steps"]}'
  wall = format_duration(run['wall_time_s'])
  if run['wall_time_s'] is not None and not run['wall_time_exact']:
    wall = '~' + wall  # from file mtimes (see runs.load_run).
  return [
      run['name'],
      run['variant'],
      _fmt(run['paper_top1'], '.1f'),
      _pct(run['top1']),
      _pct(run['random_top1']),
      knn,
      _pct(run['random_knn_top1']),
      _pct(run['online_top1']),
      _fmt(final['collapse_std_projection'], '.3f'),
      _fmt(final['collapse_std_representation'], '.3f'),
      collapse_cell(run),
      _fmt(final['loss'], '.4f'),
      steps,
      wall,
  ]


def markdown_table(runs: Sequence[dict]) -> str:
  """A markdown table, one row per run, in the given order.

  Args:
    runs: runs.load_run() dicts.

  Returns:
    The table (header, separator, rows), newline-terminated. Accuracies in %
    with 1 decimal (as the paper reports them), collapse statistics with 3,
    loss with 4; '—' where a number is unknown. The paper's numbers are
    ImageNet top-1 of ResNet-50 runs (Tables 1-2): compare the ordering of
    variants, not the values, at small scale.
  """
  lines = [
      '| ' + ' | '.join(_COLUMNS) + ' |',
      '|' + '|'.join(['---'] * len(_COLUMNS)) + '|',
  ]
  for run in runs:
    cells = [c.replace('|', '\\|') for c in table_row(run)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def write_report(
    workdirs: Sequence[str],
    out_dir,
    table_name: str = 'report.md',
    title: str = '',
    notes: Sequence[str] = (),
    group_by_method: bool = False,
) -> dict:
  """Writes out_dir/<table_name> (title, table, plot links) and the plots.

  Args:
    workdirs: run directories, in table order.
    out_dir: output directory (local path or gs://), created if needed.
    table_name: file name of the markdown report inside out_dir.
    title: heading of the report and prefix of the plot titles.
    notes: lines added under the table (e.g. variants not run yet).
    group_by_method: one set of plots per method (plots/<method>_<metric>.png)
      instead of one for all runs; for tables with many runs.

  Returns:
    {'table_path': str, 'table': str, 'plots': {metric or
    '<method>_<metric>': plot info}, 'runs': [...]}.

  Raises:
    ValueError: no workdirs, or one of them is not a readable run
      (runs.load_run).
    OSError: out_dir cannot be written.
  """
  if not workdirs:
    raise ValueError('no run directories: pass --workdirs=DIR1,DIR2.')
  runs = [runs_lib.load_run(w) for w in workdirs]
  table = markdown_table(runs)
  groups = {'': runs}
  if group_by_method:
    groups = {}
    for run in runs:
      groups.setdefault(run['method'] + '_', []).append(run)
  plots = {}
  for prefix, group in groups.items():
    group_title = f'{title}, {prefix[:-1].upper()}' if prefix else title
    plots.update(
        {
            prefix + m: info
            for m, info in plots_lib.plot(
                group, out_dir, title=group_title, prefix=prefix
            ).items()
        }
    )
  parts = [f'# {title}\n' if title else '', table]
  parts += [f'\n{line}\n' for line in notes]
  parts.append(
      "\nPaper top-1: the paper's ImageNet linear top-1 of the "
      f'variant (ResNet-50, Tables 1-2; {paper.CITATION}; byol_jax/'
      'paper.py), a dash where the paper has no such cell. '
      'Random-init top-1: the same probe on a randomly initialised '
      'encoder of the same architecture (kNN likewise). Online '
      'top-1: the online classifier (trained on the stop-gradient '
      'representation beside BYOL) on the test split. Collapse std: '
      'per-dimension std of l2-normalised embeddings x sqrt(dim), ~1 '
      "healthy, 0 collapsed. Collapse, paper / ours: the paper's "
      f'cell below {paper.COLLAPSED_BELOW:g}% top-1; ours with the '
      f'projection statistic below {COLLAPSE_STD_BELOW:g}. Wall time '
      'with ~: from file modification times.\n'
  )
  parts += [f'\n![{m}](plots/{m}.png)\n' for m in plots]
  path = epath.Path(out_dir) / table_name
  path.write_text(''.join(parts))
  return {'table_path': str(path), 'table': table, 'plots': plots, 'runs': runs}


def parse_flags(argv):
  """absl's flag parsing, an error as one line and exit code 2.

  The flags_parser of this command and of byol_jax.reproduce.

  Args:
    argv: the full command line (sys.argv).

  Returns:
    argv without the parsed flags.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _exit(f'Usage error: {e}')
  if len(rest) > 1:
    _exit(
        f'Usage error: unexpected arguments {rest[1:]}; this command '
        'takes flags only (--help lists them).'
    )
  return rest


def _exit(message: str):
  print(' '.join(message.split()), file=sys.stderr)
  sys.exit(2)


def main(argv):
  """Writes the report of --workdirs into --out and prints the table.

  Every error (a missing or unreadable workdir, a bad --out) ends the process
  with one line on stderr and exit code 2.

  Args:
    argv: the command line left after absl's flags (ignored).
  """
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top

  f = flags.FLAGS
  out = epath.Path(f.out)
  if not f.out.strip() or (out.exists() and not out.is_dir()):
    _exit(
        f'report: --out={f.out!r} is not a directory: name the directory '
        'for the report and its plots (created if needed).'
    )
  try:
    written = write_report([w for w in f.workdirs if w], out, title=f.title)
  except ValueError as e:  # runs.load_run: a workdir or its files.
    _exit(f'report: {e}')
  except OSError as e:
    _exit(f'report: cannot write to --out={f.out} ({e}).')
  print(written['table'], end='')
  print(
      f'Wrote {written["table_path"]} and {len(written["plots"])} plots in '
      f'{out / "plots"}.'
  )


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_list('workdirs', None, 'Run directories, comma-separated.')
  flags.DEFINE_string('out', None, 'Output directory for report and plots.')
  flags.DEFINE_string('title', '', 'Report title.')
  flags.mark_flags_as_required(['workdirs', 'out'])
  app.run(main, flags_parser=parse_flags)
