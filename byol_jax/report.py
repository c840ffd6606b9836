"""Results tables and plots from one or many run workdirs.

Reads what a run leaves behind and nothing else, so it works on any set of
finished (or still running) workdirs, copied from anywhere:

  * config.json (byol_jax/pretrain.py): method, per-component norms, whether
    the modified init of paper §3.2 is on, paper_top1 (the paper's ImageNet
    top-1 in %, -1: none), derived.total_steps (training.total_steps in
    config.json files written before the derived section existed).
  * metrics.jsonl (byol_jax/writers.py): loss, collapse statistics and
    online-classifier accuracy against step. Required.
  * pretrain_done.json: written when pre-training finished; its optional
    'wall_time_s' is the recorded pre-training wall time.
  * eval_results.json (byol_jax/evaluation/linear_eval.py): linear top-1/top-5
    and kNN top-1 of the frozen encoder, fractions in [0, 1].

Usage:

  python -m byol_jax.report --workdirs=/tmp/bn,/tmp/gnws,/tmp/nonorm \
      --out=/tmp/report --title='Table 2, tiny scale'

writes OUT/report.md (the table) and OUT/plots/{loss,collapse_std_projection,
collapse_std_representation,online_top1}.png, one line per run.
"""
import json
import math
from typing import Optional, Sequence

from etils import epath

from byol_jax import methods
from byol_jax import paper
from byol_jax import workdir as workdir_lib
from byol_jax import writers

# Metrics plotted against step, one PNG each (names as in metrics.jsonl).
PLOT_METRICS = ('loss', 'collapse_std_projection',
                'collapse_std_representation', 'online_top1')
_PLOT_YLABELS = {
    'loss': 'regression loss 2 - 2cos (BYOL) / InfoNCE (SimCLR)',
    'collapse_std_projection': 'std of l2-normalised projection x sqrt(dim)',
    'collapse_std_representation':
        'std of l2-normalised representation x sqrt(dim)',
    'online_top1': 'online classifier top-1 (train batch)',
}
_DASH = '—'


def _read_json(path: epath.Path) -> Optional[dict]:
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON ({e}); delete or fix it.') from e


def _last(rows: Sequence[dict], key: str) -> Optional[float]:
  """The value of `key` in the last row that has it (rows may be partial)."""
  for row in reversed(rows):
    if key in row:
      return float(row[key])
  return None


def _norm_label(model: dict, component: str) -> str:
  norm = model.get(f'{component}_norm', '?')
  ws_key = 'encoder_ws' if component == 'encoder' else 'heads_ws'
  return norm + ('+ws' if model.get(ws_key) else '')


def variant_label(config: dict) -> str:
  """'BYOL enc=gn+ws proj=gn pred=gn' (+ ' +modified init') from a config.

  Args:
    config: the run's config.json as a dict.

  Returns:
    The method in capitals and each component's normalisation ('+ws' where
    weight standardisation is on). SimCLR has no predictor, so none is shown.
  """
  method = str(config.get('method', '?'))
  model = config.get('model', {})
  parts = [method.upper(), 'enc=' + _norm_label(model, 'encoder'),
           'proj=' + _norm_label(model, 'projector')]
  if method != methods.SIMCLR:
    parts.append('pred=' + _norm_label(model, 'predictor'))
  if config.get('training', {}).get('modified_init'):
    parts.append('+modified init')  # paper §3.2
  return ' '.join(parts)


def _wall_time(workdir: epath.Path, done: Optional[dict]):
  """(seconds, exact) of pre-training, or (None, False) when unknown.

  Exact: pretrain_done.json's 'wall_time_s'. Otherwise approximate: the
  mtime of metrics.jsonl (last metric written) minus that of config.json
  (written when a run starts). A resumed run rewrites config.json, so the
  approximation then covers only the last segment.
  """
  if done and 'wall_time_s' in done:
    return float(done['wall_time_s']), True
  config_path = workdir_lib.config_path(workdir)
  if not config_path.exists():
    return None, False
  # epath's stat() works on local paths and on gs:// objects alike.
  start = config_path.stat().mtime
  end = workdir_lib.metrics_path(workdir).stat().mtime
  if start is None or end is None:
    return None, False
  return max(float(end) - float(start), 0.), False


def load_run(workdir) -> dict:
  """Everything the table and plots need from one run directory.

  Args:
    workdir: a run directory (local path or gs://) holding metrics.jsonl and
      usually config.json, pretrain_done.json and eval_results.json.

  Returns:
    dict with 'name' (basename), 'workdir', 'variant', 'paper_top1' (% or
    None), 'rows' (metrics.jsonl rows), 'last_step', 'total_steps' (None if
    unknown), 'final' (last value of each of loss, collapse_std_projection,
    collapse_std_representation, online_top1, knn_top1; None if never logged),
    'wall_time_s' and 'wall_time_exact' (see _wall_time), 'finished',
    'top1', 'top5', 'knn_top1' (linear-eval fractions, None without
    eval_results.json).

  Raises:
    ValueError: the workdir has no metrics.jsonl (or it has no rows).
  """
  workdir = epath.Path(workdir)
  metrics_path = workdir_lib.metrics_path(workdir)
  if not metrics_path.exists():
    raise ValueError(
        f'{metrics_path} does not exist: {workdir} is not a pre-training '
        'workdir, or pre-training has not logged yet. Run `python -m '
        f'byol_jax.main --config=experiments/<variant>.py --workdir={workdir}`'
        ' first (or pass the right --workdirs).')
  rows = writers.read_metrics(workdir)
  if not rows:
    raise ValueError(f'{metrics_path} has no metric rows; let pre-training '
                     'run to its first logging step.')
  config = _read_json(workdir_lib.config_path(workdir)) or {}
  done = _read_json(workdir_lib.pretrain_done_path(workdir))
  results = _read_json(workdir_lib.eval_results_path(workdir)) or {}
  paper = config.get('paper_top1', -1.)
  total = config.get('derived', {}).get(
      'total_steps', config.get('training', {}).get('total_steps', -1))
  wall, exact = _wall_time(workdir, done)
  return {
      'name': workdir.name,
      'method': str(config.get('method', methods.BYOL)),
      'workdir': str(workdir),
      'variant': variant_label(config) if config else workdir.name,
      'paper_top1': None if paper is None or paper < 0 else float(paper),
      'rows': rows,
      'last_step': max(int(r['step']) for r in rows),
      'total_steps': int(total) if total and total > 0 else None,
      'final': {k: _last(rows, k) for k in PLOT_METRICS + ('knn_top1',)},
      'wall_time_s': wall,
      'wall_time_exact': exact,
      'finished': done is not None,
      'top1': results.get('top1'),
      'top5': results.get('top5'),
      'knn_top1': results.get('knn_top1'),
      # The same probe on a randomly initialised encoder (eval.random_baseline).
      'random_top1': (results.get('random_init') or {}).get('top1'),
  }


def _fmt(x: Optional[float], fmt: str) -> str:
  if x is None:
    return _DASH
  if not math.isfinite(x):
    return str(x)  # 'nan' / 'inf': a diverged run stays visible.
  return format(x, fmt)


def _pct(x: Optional[float]) -> str:
  return _DASH if x is None else _fmt(100. * x, '.1f')


def format_duration(seconds: Optional[float]) -> str:
  """A duration for the table: 12 -> '12s', 754 -> '12m34s', 7380 -> '2h03m'.

  Args:
    seconds: the duration in seconds, or None (unknown).

  Returns:
    writers.format_duration's text; '—' for None.
  """
  return _DASH if seconds is None else writers.format_duration(seconds)


_COLUMNS = ('run', 'variant', 'paper top-1 (%)', 'linear top-1 (%)',
            'random-init top-1 (%)', 'kNN top-1 (%)', 'collapse std proj',
            'collapse std repr', 'collapse: paper / ours', 'final loss',
            'steps', 'wall time')
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
    run: a load_run() dict (reads 'paper_top1' and
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
    run: a load_run() dict.

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
    wall = '~' + wall  # from file mtimes (see _wall_time).
  return [run['name'], run['variant'], _fmt(run['paper_top1'], '.1f'),
          _pct(run['top1']), _pct(run['random_top1']), knn,
          _fmt(final['collapse_std_projection'], '.3f'),
          _fmt(final['collapse_std_representation'], '.3f'),
          collapse_cell(run), _fmt(final['loss'], '.4f'), steps, wall]


def markdown_table(runs: Sequence[dict]) -> str:
  """A markdown table, one row per run, in the given order.

  Args:
    runs: load_run() dicts.

  Returns:
    The table (header, separator, rows), newline-terminated. Accuracies in %
    with 1 decimal (as the paper reports them), collapse statistics with 3,
    loss with 4; '—' where a number is unknown. The paper's numbers are
    ImageNet top-1 of ResNet-50 runs (Tables 1-2): compare the ordering of
    variants, not the values, at small scale.
  """
  lines = ['| ' + ' | '.join(_COLUMNS) + ' |',
           '|' + '|'.join(['---'] * len(_COLUMNS)) + '|']
  for run in runs:
    cells = [c.replace('|', '\\|') for c in table_row(run)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def plot(runs: Sequence[dict], out_dir, title: str = '',
         prefix: str = '') -> dict:
  """One PNG per metric in PLOT_METRICS, one line per run (x = step).

  Args:
    runs: load_run() dicts.
    out_dir: the PNGs go to out_dir/plots/<prefix><metric>.png (local or
      gs://).
    title: prefix of each plot's title.
    prefix: file-name prefix of the PNGs (e.g. 'byol_').

  Returns:
    {metric: {'path': str, 'num_lines': int, 'labels': [str]}}; a run that
    never logged a metric has no line in its plot.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # No display on servers / CI.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  plot_dir = epath.Path(out_dir) / 'plots'
  plot_dir.mkdir(parents=True, exist_ok=True)
  out = {}
  for metric in PLOT_METRICS:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    labels = []
    for run in runs:
      points = [(r['step'], r[metric]) for r in run['rows'] if metric in r]
      if not points:
        continue
      label = f'{run["variant"]} ({run["name"]})'
      ax.plot([p[0] for p in points], [p[1] for p in points], marker='.',
              label=label)
      labels.append(label)
    ax.set_xlabel('step')
    ax.set_ylabel(_PLOT_YLABELS[metric], fontsize=8)
    ax.set_title(f'{title}: {metric}' if title else metric)
    ax.grid(alpha=0.3)
    if labels:
      ax.legend(fontsize=7)
    fig.tight_layout()
    path = plot_dir / f'{prefix}{metric}.png'
    with path.open('wb') as f:
      fig.savefig(f, format='png')
    out[metric] = {'path': str(path), 'num_lines': len(ax.get_lines()),
                   'labels': labels}
    plt.close(fig)
  return out


def write_report(workdirs: Sequence[str], out_dir,
                 table_name: str = 'report.md', title: str = '',
                 notes: Sequence[str] = (),
                 group_by_method: bool = False) -> dict:
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
    ValueError: no workdirs, or one of them has no metrics.jsonl.
  """
  if not workdirs:
    raise ValueError('write_report needs at least one workdir (--workdirs).')
  runs = [load_run(w) for w in workdirs]
  table = markdown_table(runs)
  groups = {'': runs}
  if group_by_method:
    groups = {}
    for run in runs:
      groups.setdefault(run['method'] + '_', []).append(run)
  plots = {}
  for prefix, group in groups.items():
    group_title = f'{title}, {prefix[:-1].upper()}' if prefix else title
    plots.update({prefix + m: info for m, info in
                  plot(group, out_dir, title=group_title,
                       prefix=prefix).items()})
  parts = [f'# {title}\n' if title else '', table]
  parts += [f'\n{line}\n' for line in notes]
  parts.append('\nPaper top-1: the paper\'s ImageNet linear top-1 of the '
               f'variant (ResNet-50, Tables 1-2; {paper.CITATION}; byol_jax/'
               'paper.py), a dash where the paper has no such cell. '
               'Random-init top-1: the same probe on a randomly initialised '
               'encoder of the same architecture. Collapse std: '
               'per-dimension std of l2-normalised embeddings x sqrt(dim), ~1 '
               'healthy, 0 collapsed. Collapse, paper / ours: the paper\'s '
               f'cell below {paper.COLLAPSED_BELOW:g}% top-1; ours with the '
               f'projection statistic below {COLLAPSE_STD_BELOW:g}. Wall time '
               'with ~: from file modification times.\n')
  parts += [f'\n![{m}](plots/{m}.png)\n' for m in plots]
  path = epath.Path(out_dir) / table_name
  path.write_text(''.join(parts))
  return {'table_path': str(path), 'table': table, 'plots': plots,
          'runs': runs}


def main(argv):
  """Writes the report of --workdirs into --out and prints the table.

  Args:
    argv: the command line left after absl's flags (ignored).
  """
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  out = write_report([w for w in f.workdirs if w], f.out, title=f.title)
  print(out['table'], end='')
  print(f'Wrote {out["table_path"]} and {len(out["plots"])} plots in '
        f'{epath.Path(f.out) / "plots"}.')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_list('workdirs', None, 'Run directories, comma-separated.')
  flags.DEFINE_string('out', None, 'Output directory for report and plots.')
  flags.DEFINE_string('title', '', 'Report title.')
  flags.mark_flags_as_required(['workdirs', 'out'])
  app.run(main)
