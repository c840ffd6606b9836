"""The run directory's layout: the one home of its file names.

A pre-training run's WORKDIR holds:

  config.json            the built config (inputs and the `derived` section)
  config_history.jsonl   one line per start under a new or changed config
  checkpoints/<step>/    orbax checkpoints of the whole TrainState
  metrics.jsonl          one JSON line per logged step (writers.py)
  pretrain_done.json     last step, last metrics, wall time, state_sha256
  eval_results.json      linear evaluation (linear_eval.run_linear_eval)

Process 0 writes all of them but the checkpoints. A workdir is a local path
or a gs:// URL: the helpers return etils.epath paths.
"""
from etils import epath

CONFIG = 'config.json'
CONFIG_HISTORY = 'config_history.jsonl'
CHECKPOINTS = 'checkpoints'
METRICS = 'metrics.jsonl'
PRETRAIN_DONE = 'pretrain_done.json'
EVAL_RESULTS = 'eval_results.json'


def config_path(workdir) -> epath.Path:
  """WORKDIR/config.json."""
  return epath.Path(workdir) / CONFIG


def config_history_path(workdir) -> epath.Path:
  """WORKDIR/config_history.jsonl."""
  return epath.Path(workdir) / CONFIG_HISTORY


def checkpoint_dir(workdir) -> epath.Path:
  """WORKDIR/checkpoints (one sub-directory per saved step)."""
  return epath.Path(workdir) / CHECKPOINTS


def metrics_path(workdir) -> epath.Path:
  """WORKDIR/metrics.jsonl."""
  return epath.Path(workdir) / METRICS


def pretrain_done_path(workdir) -> epath.Path:
  """WORKDIR/pretrain_done.json."""
  return epath.Path(workdir) / PRETRAIN_DONE


def eval_results_path(workdir) -> epath.Path:
  """WORKDIR/eval_results.json."""
  return epath.Path(workdir) / EVAL_RESULTS
