"""One run directory as the report reads it: config, metrics and results.

Reads only what a run leaves behind (config.json, metrics.jsonl,
pretrain_done.json, eval_results.json), so it works on any copied workdirs,
finished or still running.
"""

import json
from typing import Optional, Sequence

from etils import epath

from byol_jax import methods
from byol_jax import workdir as workdir_lib
from byol_jax import writers

# Metrics followed against step (names as in metrics.jsonl): load_run keeps
# the last value of each, and plots.plot draws one PNG each.
PLOT_METRICS = (
    'loss',
    'collapse_std_projection',
    'collapse_std_representation',
    'online_top1',
)


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
  if value is not None and (
      isinstance(value, bool) or not isinstance(value, (int, float))
  ):
    raise ValueError(
        f'{path}: {key}={value!r} is not a number; fix or ' 'delete the file.'
    )
  return None if value is None else float(value)


def _check_rows(rows: Sequence[dict], path) -> None:
  """Every row an object with an integer step and numeric metrics."""
  for i, row in enumerate(rows):
    if not isinstance(row, dict) or not isinstance(row.get('step'), int):
      raise ValueError(
          f'{path}: row {i + 1} ({str(row)[:60]}) has no '
          'integer "step"; not a byol_jax metrics.jsonl.'
      )
    for key in PLOT_METRICS + ('knn_top1',):
      _number(row, key, f'{path} row {i + 1}')


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
  """'BYOL enc=gn+ws proj=gn pred=gn' (+ ' +modified init') of a config dict."""
  method = str(config.get('method', '?'))
  model = config.get('model', {})
  parts = [
      method.upper(),
      'enc=' + _norm_label(model, 'encoder'),
      'proj=' + _norm_label(model, 'projector'),
  ]
  if method != methods.SIMCLR:
    parts.append('pred=' + _norm_label(model, 'predictor'))
  if config.get('training', {}).get('modified_init'):
    parts.append('+modified init')  # paper §3.2
  return ' '.join(parts)


def _wall_time(workdir: epath.Path, done: Optional[dict], done_path):
  """(seconds, exact) of pre-training, or (None, False) when unknown.

  Exact: pretrain_done.json's 'wall_time_s'. Otherwise metrics.jsonl's mtime
  minus config.json's (rewritten at a resume: then the last segment only).
  """
  if done and 'wall_time_s' in done:
    return _number(done, 'wall_time_s', done_path), True
  config_path = workdir_lib.config_path(workdir)
  if not config_path.exists():
    return None, False
  # epath's stat() works on local paths and on gs:// objects alike.
  start = config_path.stat().mtime
  end = workdir_lib.metrics_path(workdir).stat().mtime
  if start is None or end is None:
    return None, False
  return max(float(end) - float(start), 0.0), False


def load_run(workdir) -> dict:
  """Everything the table and plots need from one run directory.

  Returns:
    {'name', 'method', 'workdir', 'variant', 'paper_top1' (% or None), 'rows'
    (metrics.jsonl), 'last_step', 'total_steps', 'final' (last value of each
    PLOT_METRICS and knn_top1), 'wall_time_s', 'wall_time_exact', 'finished',
    'top1', 'top5', 'knn_top1', 'random_top1' (fractions, None without
    eval_results.json)}.

  Raises:
    ValueError: not a directory, no metric rows, or a file unreadable or not
      what byol_jax writes (naming it).
  """
  workdir = epath.Path(workdir)
  metrics_path = workdir_lib.metrics_path(workdir)
  if not workdir.is_dir():
    raise ValueError(
        f'{workdir} is not a directory; name run directories '
        '(--workdirs=DIR1,DIR2).'
    )
  if not metrics_path.exists():
    raise ValueError(
        f'{metrics_path} does not exist: {workdir} is not a pre-training '
        'workdir, or pre-training has not logged yet. Run `python -m '
        f'byol_jax.main --config=experiments/<variant>.py --workdir={workdir}`'
        ' first (or pass the right --workdirs).'
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
  _check_rows(rows, metrics_path)
  config_path = workdir_lib.config_path(workdir)
  config = read_json(config_path) or {}
  done_path = workdir_lib.pretrain_done_path(workdir)
  done = read_json(done_path)
  results_path = workdir_lib.eval_results_path(workdir)
  results = read_json(results_path) or {}
  paper = _number(config, 'paper_top1', config_path)
  total = _number(config.get('derived') or {}, 'total_steps', config_path)
  if total is None:  # a config.json without the derived section.
    total = _number(config.get('training') or {}, 'total_steps', config_path)
  wall, exact = _wall_time(workdir, done, done_path)
  return {
      'name': workdir.name,
      'method': str(config.get('method', methods.BYOL)),
      'workdir': str(workdir),
      'variant': variant_label(config) if config else workdir.name,
      'paper_top1': None if paper is None or paper < 0 else paper,
      'rows': rows,
      'last_step': max(int(r['step']) for r in rows),
      'total_steps': int(total) if total and total > 0 else None,
      'final': {k: _last(rows, k) for k in PLOT_METRICS + ('knn_top1',)},
      'wall_time_s': wall,
      'wall_time_exact': exact,
      'finished': done is not None,
      'top1': _number(results, 'top1', results_path),
      'top5': _number(results, 'top5', results_path),
      'knn_top1': _number(results, 'knn_top1', results_path),
      # The online classifier (a monitor trained beside BYOL) on test.
      'online_top1': _number(results, 'online_top1', results_path),
      # The same probe on a randomly initialised encoder (eval.random_baseline).
      'random_top1': _number(
          results.get('random_init') or {}, 'top1', results_path
      ),
      'random_knn_top1': _number(
          results.get('random_init') or {}, 'knn_top1', results_path
      ),
  }
