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

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from byol_jax import distributed
from byol_jax import experiment
from byol_jax import runner

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


run = runner.run  # the experiment itself (byol_jax/runner.py).


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  runner.quiet_libraries()
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
