"""One run directory as the report reads it, from the files a run leaves."""

import json
from typing import Optional

from etils import epath

from byol_jax import methods
from byol_jax.training import workdir as workdir_lib
from byol_jax.training import writers

# Metrics followed against step (names as in metrics.jsonl) -> y-axis label:
# load_run keeps the last value of each, and plots.plot draws one PNG each.
PLOT_METRICS = {
    'loss': 'regression loss 2 - 2cos (BYOL) / InfoNCE (SimCLR)',
    'collapse_std_projection': 'std of l2-normalised projection x sqrt(dim)',
    'collapse_std_representation': (
        'std of l2-normalised representation x sqrt(dim)'
    ),
    'online_top1': 'online classifier top-1 (train batch)',
}


def read_json(path: epath.Path) -> Optional[dict]:
  """The JSON object in a file; None if absent; ValueError naming it if bad."""
  if not path.exists():
    return None
  try:
    value = json.loads(path.read_text())
  except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON.
    raise ValueError(
        f'{path} cannot be read as JSON '
        f'({" ".join(str(e).split())}); fix or delete it.'
    ) from None
  if not isinstance(value, dict):
    raise ValueError(
        f'{path} holds {type(value).__name__}, not a JSON object;'
        ' fix or delete it.'
    )
  return value


def _number(record: dict, key: str, path) -> Optional[float]:
  """record[key] as a float (None when absent); ValueError naming `path`."""
  value = record.get(key)
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(
        f'{path}: {key}={value!r} is not a number; fix or delete the file.'
    )
  return float(value)


def variant_label(config: dict) -> str:
  """'BYOL enc=gn+ws proj=gn pred=gn' (+ ' +modified init') of a config dict."""
  method = str(config.get('method', '?'))
  model = config.get('model', {})
  parts = [method.upper()]
  for short, part in (('enc', 'encoder'), ('proj', 'projector')) + (
      () if method == methods.SIMCLR else (('pred', 'predictor'),)
  ):
    ws = model.get('encoder_ws' if part == 'encoder' else 'heads_ws')
    parts.append(f'{short}={model.get(part + "_norm", "?")}' + '+ws' * bool(ws))
  if config.get('training', {}).get('modified_init'):
    parts.append('+modified init')  # paper §3.2
  return ' '.join(parts)


def load_run(workdir) -> dict:
  """A run directory's table and plot values (accuracies as fractions)."""
  workdir = epath.Path(workdir)
  metrics_path = workdir_lib.metrics_path(workdir)
  if not workdir.is_dir():
    raise ValueError(f'{workdir} is not a directory: pass run directories.')
  if not metrics_path.exists():
    raise ValueError(
        f'{metrics_path} does not exist: not a pre-training workdir, or not '
        'logged yet; run python -m byol_jax.main --config=experiments/<variant>'
        f'.py --workdir={workdir} first (or pass the right --workdirs).'
    )
  try:
    rows = writers.read_metrics(workdir)
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'{metrics_path} cannot be read ({e}).') from None
  if not rows:
    raise ValueError(
        f'{metrics_path} has no metric rows; let pre-training '
        'run to its first logging step.'
    )
  final = dict.fromkeys((*PLOT_METRICS, 'knn_top1'))  # each one's last value
  for i, row in enumerate(rows):
    if not isinstance(row, dict) or not isinstance(row.get('step'), int):
      raise ValueError(
          f'{metrics_path}: row {i + 1} ({str(row)[:60]}) has no '
          'integer "step"; not a byol_jax metrics.jsonl.'
      )
    for key in final:
      value = _number(row, key, f'{metrics_path} row {i + 1}')
      final[key] = final[key] if value is None else value
  config_path = workdir_lib.config_path(workdir)
  done_path = workdir_lib.pretrain_done_path(workdir)
  results_path = workdir_lib.eval_results_path(workdir)
  config, done = read_json(config_path) or {}, read_json(done_path)
  results = read_json(results_path) or {}
  random_init = results.get('random_init') or {}
  paper = _number(config, 'paper_top1', config_path)
  total = _number(config.get('derived') or {}, 'total_steps', config_path)
  wall = _number(done or {}, 'wall_time_s', done_path)
  exact = wall is not None
  if not exact and config_path.exists():
    # metrics.jsonl's mtime minus config.json's (rewritten at a resume: then
    # the last segment only); epath's stat() works on gs:// objects too.
    start = config_path.stat().mtime
    wall = max(float(metrics_path.stat().mtime - start), 0.0)
  return {
      'name': workdir.name,
      'method': str(config.get('method', methods.BYOL)),
      'workdir': str(workdir),
      'variant': variant_label(config) if config else workdir.name,
      'paper_top1': None if paper is None or paper < 0 else paper,
      'rows': rows,
      'last_step': max(int(r['step']) for r in rows),
      'total_steps': int(total) if total and total > 0 else None,
      'final': final,
      'wall_time_s': wall,
      'wall_time_exact': exact,
      'finished': done is not None,
      'top1': _number(results, 'top1', results_path),
      'top5': _number(results, 'top5', results_path),
      'knn_top1': _number(results, 'knn_top1', results_path),
      'online_top1': _number(results, 'online_top1', results_path),
      'random_top1': _number(random_init, 'top1', results_path),
      'random_knn_top1': _number(random_init, 'knn_top1', results_path),
  }
