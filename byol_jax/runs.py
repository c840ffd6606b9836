"""One run directory as the report reads it: its config, metrics and results.

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

`load_run` gathers all of it into one dict; report.py renders those dicts as
a table and plots.py draws their metrics against step.
"""
import json
from typing import Optional, Sequence

from etils import epath

from byol_jax import methods
from byol_jax import workdir as workdir_lib
from byol_jax import writers

# Metrics followed against step (names as in metrics.jsonl): load_run keeps
# the last value of each, and plots.plot draws one PNG each.
PLOT_METRICS = ('loss', 'collapse_std_projection',
                'collapse_std_representation', 'online_top1')


def read_json(path: epath.Path) -> Optional[dict]:
  """The JSON object in a run's file.

  Args:
    path: e.g. WORKDIR/config.json.

  Returns:
    The parsed object; None when there is no such file.

  Raises:
    ValueError: the file is unreadable, not JSON, or not a JSON object (the
      message names it).
  """
  if not path.exists():
    return None
  try:
    value = json.loads(path.read_text())
  except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON.
    raise ValueError(f'{path} cannot be read as JSON '
                     f'({" ".join(str(e).split())}); fix or delete it.'
                     ) from None
  if not isinstance(value, dict):
    raise ValueError(f'{path} holds {type(value).__name__}, not a JSON object;'
                     ' fix or delete it.')
  return value


def _number(record: dict, key: str, path) -> Optional[float]:
  """record[key] as a float (None when absent); ValueError naming `path`."""
  value = record.get(key)
  if value is not None and (isinstance(value, bool) or
                            not isinstance(value, (int, float))):
    raise ValueError(f'{path}: {key}={value!r} is not a number; fix or '
                     'delete the file.')
  return None if value is None else float(value)


def _check_rows(rows: Sequence[dict], path) -> None:
  """Every row an object with an integer step and numeric metrics."""
  for i, row in enumerate(rows):
    if not isinstance(row, dict) or not isinstance(row.get('step'), int):
      raise ValueError(f'{path}: row {i + 1} ({str(row)[:60]}) has no '
                       'integer "step"; not a byol_jax metrics.jsonl.')
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


def _wall_time(workdir: epath.Path, done: Optional[dict], done_path):
  """(seconds, exact) of pre-training, or (None, False) when unknown.

  Exact: pretrain_done.json's 'wall_time_s'. Otherwise approximate: the
  mtime of metrics.jsonl (last metric written) minus that of config.json
  (written when a run starts). A resumed run rewrites config.json, so the
  approximation then covers only the last segment.
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
    ValueError: the workdir is not a directory or has no metric rows, or one
      of its files is unreadable or not what byol_jax writes (the message
      names the file).
  """
  workdir = epath.Path(workdir)
  metrics_path = workdir_lib.metrics_path(workdir)
  if not workdir.is_dir():
    raise ValueError(f'{workdir} is not a directory; name run directories '
                     '(--workdirs=DIR1,DIR2).')
  if not metrics_path.exists():
    raise ValueError(
        f'{metrics_path} does not exist: {workdir} is not a pre-training '
        'workdir, or pre-training has not logged yet. Run `python -m '
        f'byol_jax.main --config=experiments/<variant>.py --workdir={workdir}`'
        ' first (or pass the right --workdirs).')
  try:
    rows = writers.read_metrics(workdir)
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'{metrics_path} cannot be read ({e}).') from None
  if not rows:
    raise ValueError(f'{metrics_path} has no metric rows; let pre-training '
                     'run to its first logging step.')
  _check_rows(rows, metrics_path)
  config_path = workdir_lib.config_path(workdir)
  config = read_json(config_path) or {}
  done_path = workdir_lib.pretrain_done_path(workdir)
  done = read_json(done_path)
  results_path = workdir_lib.eval_results_path(workdir)
  results = read_json(results_path) or {}
  paper = _number(config, 'paper_top1', config_path)
  total = _number(config.get('derived') or {}, 'total_steps', config_path)
  if total is None:  # config.json written before the derived section.
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
      # The same probe on a randomly initialised encoder (eval.random_baseline).
      'random_top1': _number(results.get('random_init') or {}, 'top1',
                             results_path),
  }
