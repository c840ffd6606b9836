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
  """WORKDIR/config.json.

  Args:
    workdir: the run directory, a local path or gs:// URL (str or path).

  Returns:
    epath.Path of the built config (JSON), written at every start.
  """
  return epath.Path(workdir) / CONFIG


def config_history_path(workdir) -> epath.Path:
  """WORKDIR/config_history.jsonl.

  Args:
    workdir: the run directory, a local path or gs:// URL (str or path).

  Returns:
    epath.Path of the jsonl file with one line per start under a new or
    changed config.
  """
  return epath.Path(workdir) / CONFIG_HISTORY


def checkpoint_dir(workdir) -> epath.Path:
  """WORKDIR/checkpoints (one sub-directory per saved step).

  Args:
    workdir: the run directory, a local path or gs:// URL (str or path).

  Returns:
    epath.Path of the orbax checkpoint directory; each `<step>/`
    sub-directory holds the TrainState saved at that step.
  """
  return epath.Path(workdir) / CHECKPOINTS


def metrics_path(workdir) -> epath.Path:
  """WORKDIR/metrics.jsonl.

  Args:
    workdir: the run directory, a local path or gs:// URL (str or path).

  Returns:
    epath.Path of the jsonl file with one JSON object per logged step.
  """
  return epath.Path(workdir) / METRICS


def pretrain_done_path(workdir) -> epath.Path:
  """WORKDIR/pretrain_done.json.

  Args:
    workdir: the run directory, a local path or gs:// URL (str or path).

  Returns:
    epath.Path of the JSON file written when pre-training finishes.
  """
  return epath.Path(workdir) / PRETRAIN_DONE


def eval_results_path(workdir) -> epath.Path:
  """WORKDIR/eval_results.json.

  Args:
    workdir: the run directory, a local path or gs:// URL (str or path).

  Returns:
    epath.Path of the linear-evaluation results (JSON).
  """
  return epath.Path(workdir) / EVAL_RESULTS
