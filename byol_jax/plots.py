"""Plots of runs' metrics against step, one PNG per metric, one line per run.

The runs are runs.load_run dicts; matplotlib (Agg backend, no display) is
imported only when plotting.
"""

from typing import Sequence

from etils import epath

from byol_jax import runs as runs_lib

_PLOT_YLABELS = {
    'loss': 'regression loss 2 - 2cos (BYOL) / InfoNCE (SimCLR)',
    'collapse_std_projection': 'std of l2-normalised projection x sqrt(dim)',
    'collapse_std_representation': (
        'std of l2-normalised representation x sqrt(dim)'
    ),
    'online_top1': 'online classifier top-1 (train batch)',
}


def plot(
    runs: Sequence[dict], out_dir, title: str = '', prefix: str = ''
) -> dict:
  """One PNG per metric in runs.PLOT_METRICS, one line per run (x = step).

  Args:
    runs: runs.load_run() dicts.
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
  for metric in runs_lib.PLOT_METRICS:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    labels = []
    for run in runs:
      points = [(r['step'], r[metric]) for r in run['rows'] if metric in r]
      if not points:
        continue
      label = f'{run["variant"]} ({run["name"]})'
      ax.plot(
          [p[0] for p in points],
          [p[1] for p in points],
          marker='.',
          label=label,
      )
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
    out[metric] = {
        'path': str(path),
        'num_lines': len(ax.get_lines()),
        'labels': labels,
    }
    plt.close(fig)
  return out
