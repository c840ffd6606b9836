"""Results tables, the paper's number beside ours, and plots of run workdirs.

  python -m byol_jax.report --workdirs=/tmp/bn,/tmp/gnws --out=/tmp/report

writes OUT/report.md (the table) and OUT/plots/<metric>.png, one line per run.
"""

import functools
import sys
from typing import Optional, Sequence

from absl import app
from absl import flags
from etils import epath

from byol_jax.results import paper
from byol_jax.results import plots as plots_lib
from byol_jax.results import runs as runs_lib
from byol_jax.training import writers

_DASH = '—'
# Ours collapsed below this projection std (no-norm BYOL: 0.000; healthy >0.1).
COLLAPSE_STD_BELOW = 0.05


def _fmt(x: Optional[float], fmt: str = '.1f', scale: float = 1.0) -> str:
  return _DASH if x is None else format(scale * x, fmt)  # 'nan' stays visible


_pct = functools.partial(_fmt, scale=100.0)


def collapse_cell(run: dict) -> str:
  """'paper / ours (agree|DIFFER)', each 'collapsed', 'learns' or '—'."""
  theirs = paper.collapsed(run['paper_top1'])
  std = run['final']['collapse_std_projection']
  ours = None if std is None else std < COLLAPSE_STD_BELOW
  word = lambda c: _DASH if c is None else ('collapsed' if c else 'learns')
  cell = f'{word(theirs)} / {word(ours)}'
  if theirs is not None and ours is not None:
    cell += ' (agree)' if theirs == ours else ' (DIFFER)'
  return cell


def table_row(run: dict) -> dict[str, str]:
  """{column: cell} of one runs.load_run() dict, '—' for a missing value."""
  final = run['final']
  knn = _pct(run['knn_top1'])
  if run['knn_top1'] is None and final['knn_top1'] is not None:
    knn = _pct(final['knn_top1']) + ' (monitor)'  # training-time kNN monitor.
  steps = str(run['last_step'])
  if run['total_steps']:
    steps += f'/{run["total_steps"]}'
  wall = run['wall_time_s']
  if wall is not None:  # '~': from file mtimes (runs.load_run).
    wall = '~' * (not run['wall_time_exact']) + writers.format_duration(wall)
  return {
      'run': run['name'],
      'variant': run['variant'],
      'paper top-1 (%)': _fmt(run['paper_top1']),
      'linear top-1 (%)': _pct(run['top1']),
      'random-init top-1 (%)': _pct(run['random_top1']),
      'kNN top-1 (%)': knn,
      'random-init kNN (%)': _pct(run['random_knn_top1']),
      'online top-1 (%)': _pct(run['online_top1']),
      'collapse std proj': _fmt(final['collapse_std_projection'], '.3f'),
      'collapse std repr': _fmt(final['collapse_std_representation'], '.3f'),
      'collapse: paper / ours': collapse_cell(run),
      'final loss': _fmt(final['loss'], '.4f'),
      'steps': steps,
      'wall time': _DASH if wall is None else wall,
  }


def markdown_table(runs: Sequence[dict]) -> str:
  """A markdown table of runs.load_run() dicts, one row per run, in order."""
  rows = [table_row(run) for run in runs]
  lines = ['| ' + ' | '.join(rows[0]) + ' |', '|---' * len(rows[0]) + '|']
  for row in rows:
    cells = [c.replace('|', '\\|') for c in row.values()]
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
  """Writes out_dir/<table_name> and plots/ (per method if group_by_method).

  Returns {'table_path', 'table', 'plots', 'runs'}; ValueError for no or a bad
  workdir (runs.load_run), OSError when out_dir cannot be written.
  """
  if not workdirs:
    raise ValueError('no run directories: pass --workdirs=DIR1,DIR2.')
  runs = [runs_lib.load_run(w) for w in workdirs]
  table = markdown_table(runs)
  groups = {}
  for run in runs:
    prefix = run['method'] + '_' if group_by_method else ''
    groups.setdefault(prefix, []).append(run)
  plots = {}
  for prefix, group in groups.items():
    group_title = f'{title}, {prefix[:-1].upper()}' if prefix else title
    plots.update(plots_lib.plot(group, out_dir, group_title, prefix))
  parts = [f'# {title}\n' if title else '', table]
  parts += [f'\n{line}\n' for line in notes]
  parts.append(
      "\nPaper top-1: the paper's ImageNet linear top-1 of the variant "
      f'(ResNet-50, Tables 1-2; {paper.CITATION}; '
      'byol_jax/results/paper.py), a '
      'dash where the paper has no such cell. Random-init top-1: the same '
      'probe on a randomly initialised encoder of the same architecture (kNN '
      'likewise). Online top-1: the online classifier (trained on the '
      'stop-gradient representation beside BYOL) on the test split. Collapse '
      'std: per-dimension std of l2-normalised embeddings x sqrt(dim), ~1 '
      "healthy, 0 collapsed. Collapse, paper / ours: the paper's cell below "
      f'{paper.COLLAPSED_BELOW:g}% top-1; ours with the projection statistic '
      f'below {COLLAPSE_STD_BELOW:g}. Wall time with ~: from file '
      'modification times.\n'
  )
  parts += [f'\n![{m}](plots/{m}.png)\n' for m in plots]
  path = epath.Path(out_dir) / table_name
  path.write_text(''.join(parts))
  return {'table_path': str(path), 'table': table, 'plots': plots, 'runs': runs}


def exit_one_line(message: str):
  """The message on stderr as one line, exit code 2 (reproduce's too)."""
  print(' '.join(message.split()), file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl's flag parsing (this command's and reproduce's): errors exit 2."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    exit_one_line(f'Usage error: {e}')
  if len(rest) > 1:
    exit_one_line(
        f'Usage error: unexpected arguments {rest[1:]}; this command '
        'takes flags only (--help lists them).'
    )
  return rest


def main(argv):
  """Writes --workdirs' report into --out, prints the table; errors exit 2."""
  del argv
  f = flags.FLAGS
  out = epath.Path(f.out)
  if not f.out.strip() or (out.exists() and not out.is_dir()):
    exit_one_line(
        f'report: --out={f.out!r} is not a directory: name the directory '
        'for the report and its plots (created if needed).'
    )
  try:
    written = write_report([w for w in f.workdirs if w], out, title=f.title)
  except ValueError as e:  # runs.load_run: a workdir or its files.
    exit_one_line(f'report: {e}')
  except OSError as e:
    exit_one_line(f'report: cannot write to --out={f.out} ({e}).')
  print(written['table'], end='')
  print(
      f'Wrote {written["table_path"]} and {len(written["plots"])} plots in '
      f'{out / "plots"}.'
  )


if __name__ == '__main__':
  flags.DEFINE_list('workdirs', None, 'Run directories, comma-separated.')
  flags.DEFINE_string('out', None, 'Output directory for report and plots.')
  flags.DEFINE_string('title', '', 'Report title.')
  flags.mark_flags_as_required(['workdirs', 'out'])
  app.run(main, flags_parser=parse_flags)
