r"""Entry point: pre-training or linear evaluation, chosen by the config.

    python -m byol_jax.main --config=experiments/gn_ws.py --workdir=/tmp/run
    python -m byol_jax.main --config=experiments/quickstart.py \
        --workdir=/tmp/byol_quickstart
    python -m byol_jax.main --config=experiments/ablation.py:encoder=bn,tiny \
        --workdir=/tmp/abl --config.training.total_steps=100

Rerunning the same command on a workdir that holds a checkpoint resumes it.
This is the only module that reads flags.

Multi-process runs (TPU pods, several GPU nodes) run this same command on every
host; jax.distributed starts first, from the flags below, BYOL_* variables,
SLURM or the Cloud TPU metadata (byol_jax/distributed.py decides):

    python -m byol_jax.main --config=... --workdir=gs://bucket/run \
        --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0
"""

import logging as logging_lib
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from byol_jax import distributed
from byol_jax import experiment

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. experiments/gn_ws.py[:opts].',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (local or '
                               'gs://); holds checkpoints, logs, results.')
flags.mark_flags_as_required(['config', 'workdir'])
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', distributed.MODES,
    'auto: start jax.distributed from the flags below, BYOL_* variables, '
    'SLURM or a Cloud TPU VM (in that order); off: always one process.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (multi-process runs; '
    'with --num_processes and --process_id).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes (hosts) in the run.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process, in [0, num_processes).')


def run(config, workdir: str) -> dict:
  """Runs the experiment `config` in `workdir`; returns its summary."""
  experiment.validate(config, check_steps=False)
  source = experiment.resolve_dataset(config)
  experiment.validate(config)
  logging.info('Config:\n%s', config)
  logging.info('Process %d of %d, %d local device(s) of %d: %s',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  if config.mode == 'linear_eval':
    from byol_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
    return linear_eval.run_linear_eval_from_workdir(config, workdir)
  from byol_jax import pretrain  # pylint: disable=g-import-not-at-top
  summary = pretrain.run(config, workdir, source=source)
  if (config.eval.after_pretraining and not summary['preempted'] and
      summary['step'] >= config.training.total_steps):
    from byol_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
    state = pretrain.load_latest_state(config, workdir)
    summary['eval'] = linear_eval.run_linear_eval(
        config, workdir, state.online_params, state.online_state,
        source=source)
  return summary


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO records of chatty libraries (orbax logs every save step)."""

  def filter(self, record):
    return record.levelno >= logging_lib.WARNING or not any(
        f'/{lib}/' in record.pathname for lib in ('orbax', 'etils'))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    # Before anything touches the XLA backend (jax.distributed's rule).
    distributed.initialize(distributed.plan(
        mode=_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
        env=os.environ, on_cloud_tpu=distributed.on_cloud_tpu_vm()))
  except distributed.DistributedConfigError as e:
    print(f'Distributed setup error: {e}', file=sys.stderr)
    sys.exit(2)
  from byol_jax import checkpointing  # pylint: disable=g-import-not-at-top
  try:
    run(_CONFIG.value, _WORKDIR.value)
  except experiment.ConfigError as e:
    # One clear line, no stack trace: a config problem is the user's to fix.
    print(f'Config error: {e}', file=sys.stderr)
    sys.exit(2)
  except checkpointing.CheckpointRestoreError as e:
    # Likewise for checkpoints that cannot be resumed (unreadable, or hosts
    # that do not share the workdir): the message says what to do.
    print(f'Checkpoint error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
