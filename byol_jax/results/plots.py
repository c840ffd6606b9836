"""Plots of runs.load_run dicts' metrics against step (matplotlib)."""

from typing import Sequence

from etils import epath

from byol_jax.results import runs as runs_lib


def plot(
    runs: Sequence[dict], out_dir, title: str = '', prefix: str = ''
) -> dict:
  """plots/<prefix><metric>.png, a line per run: {prefix + metric: info}."""
  # A Figure without pyplot: no GUI backend, nothing global to close.
  from matplotlib import figure  # pylint: disable=g-import-not-at-top

  plot_dir = epath.Path(out_dir) / 'plots'
  plot_dir.mkdir(parents=True, exist_ok=True)
  out = {}
  for metric, ylabel in runs_lib.PLOT_METRICS.items():
    fig = figure.Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.subplots()
    labels = []
    for run in runs:
      points = [(r['step'], r[metric]) for r in run['rows'] if metric in r]
      if points:
        labels.append(f'{run["variant"]} ({run["name"]})')
        ax.plot(*zip(*points), marker='.', label=labels[-1])
    ax.set_xlabel('step')
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(f'{title}: {metric}' if title else metric)
    ax.grid(alpha=0.3)
    if labels:
      ax.legend(fontsize=7)
    fig.tight_layout()
    name = prefix + metric
    path = plot_dir / f'{name}.png'
    with path.open('wb') as f:
      fig.savefig(f, format='png')
    out[name] = dict(path=str(path), num_lines=len(labels), labels=labels)
  return out
