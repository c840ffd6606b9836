r"""Entry point: pre-training or linear evaluation, chosen by the config.

    python -m byol_jax.main --config=experiments/gn_ws.py --workdir=/tmp/run
    python -m byol_jax.main --config=experiments/ablation.py:encoder=bn,tiny \
        --workdir=/tmp/abl --config.training.total_steps=100
    python -m byol_jax.main --config=experiments/linear_eval.py \
        --config.eval.pretrain_workdir=/tmp/run --workdir=/tmp/eval

Rerunning a command on a workdir that holds a checkpoint resumes it (and
refuses, in one line, to resume under a changed trajectory: resume.py).
`--dry_run` prints the built config (inputs and derived values) as JSON and
exits, writing nothing and reading no image. Every config error ends the
process with one line and exit code 2. This is the only module that reads
flags.

Multi-process runs (TPU pods, several GPU nodes) run the same command on
every host; jax.distributed starts first, from the flags below, BYOL_*
variables, SLURM or the Cloud TPU metadata (distributed.py decides).
`--require_accelerator` stops a run (exit 2) on JAX's CPU backend, and
`--require_pinned_stack` when jax and its plugins differ from
constraints.txt (stack.py); the launch scripts pass both.
"""

import json
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from byol_jax.config import plan
from byol_jax.hosts import distributed
from byol_jax.hosts import stack
from byol_jax.training import checkpointing
from byol_jax.training import pretrain
from byol_jax.training import runner

_CONFIG = config_flags.DEFINE_config_file(
    'config',
    None,
    'Experiment config, e.g. experiments/gn_ws.py[:opts].',
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run directory (local or gs://): checkpoints, logs.'
)
_DRY_RUN = flags.DEFINE_bool(
    'dry_run',
    False,
    'Print the built config (derived values included) as JSON and exit: '
    'nothing is written, no image is read, nothing compiles.',
)
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed',
    'auto',
    distributed.MODES,
    'auto: start jax.distributed from the flags below, BYOL_* variables, '
    'SLURM or a Cloud TPU VM (in that order); off: always one process.',
)
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (multi-process).'
)
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes (hosts) in the run.'
)
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process, in [0, num_processes).'
)
_REQUIRE_ACCELERATOR = flags.DEFINE_bool(
    'require_accelerator', False, "Stop (exit 2) on JAX's CPU backend."
)
_REQUIRE_PINNED_STACK = flags.DEFINE_bool(
    'require_pinned_stack',
    False,
    'Stop (exit 2) when jax, jaxlib, libtpu or jax-cuda12-* differ from '
    'constraints.txt.',
)

run = runner.run  # the experiment itself (byol_jax/training/runner.py).


def _exit(kind: str, message):
  """One line on stderr, exit code 2: the user's to fix, no stack trace."""
  print(f'{kind}: {" ".join(str(message).split())}', file=sys.stderr)
  sys.exit(2)


def _one_line(error: Exception) -> str:
  """The last 'SomeError: message' line of ml_collections' wrapped error."""
  text = str(error)
  if 'Error whilst parsing config file' in text:
    found = re.findall(r'^\s*[\w.]*(?:Error|Exception): (.*?)\s*$', text, re.M)
    return found[-1] if found else text.strip().splitlines()[-1].strip()
  return text.splitlines()[0] if text else type(error).__name__


def _unknown_field(argv, error: Exception) -> str:
  """The line for an override of a field the config does not have."""
  text = str(error)
  name = re.search(r'[A-Za-z_]\w*', text)
  name = name.group(0) if name else text
  flag = next(
      (
          a.split('=', 1)[0]
          for a in argv[1:]
          if a.startswith('--config.') and name in a.split('=', 1)[0].split('.')
      ),
      '--config.*',
  )
  if name == 'derived':
    return (
        f'{flag}: derived values are computed at start-up and cannot be '
        'set; set the input instead (e.g. training.total_steps, '
        'training.global_batch_size).'
    )
  hint = re.search(r'Did you mean "([^"]+)"', text)
  return (
      f'{flag}: the config has no field {name!r}'
      + (f' (did you mean {hint.group(1)!r}?)' if hint else '')
      + '; --dry_run prints every field.'
  )


def parse_flags(argv):
  """absl's flag parsing (argv without the parsed flags), errors in one line."""
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError) as e:  # an override of no field
    _exit('Config error', _unknown_field(argv, e))
  except (flags.Error, ValueError, TypeError, OSError) as e:
    _exit('Config error', _one_line(e))  # get_config's or the file's


def _config():
  if _CONFIG.value is None:
    _exit(
        'Usage error',
        '--config is required, e.g. '
        '--config=experiments/gn_ws.py:tiny (experiments/ lists them).',
    )
  try:
    _CONFIG.value.to_dict()  # a config file that failed to load raises here.
  except OSError as e:
    errno = re.search(r'\[Errno \d+\].*', str(e))
    path = flags.FLAGS['config'].serialize().partition('=')[2] or '?'
    _exit('Config error', f'--config={path}: {errno.group(0) if errno else e}')
  return _CONFIG.value


def main(argv):
  """Runs `python -m byol_jax.main`: pre-training or linear evaluation.

  Args:
    argv: what absl's flags leave of the command line: the program name alone.

  Every expected failure (config, stack, distributed or checkpoint) ends the
  process with one line on stderr and exit code 2; a diverged or collapsed run
  with 'Training stopped: ...' and exit code 1.
  """
  if len(argv) > 1:
    _exit(
        'Usage error',
        f'unexpected arguments {argv[1:]}; flags only, '
        'e.g. --config=experiments/gn_ws.py --workdir=/tmp/run.',
    )
  runner.quiet_libraries()
  # Until the run is built and its workdir checked, only warnings and the
  # error line reach the console: a bad input reads as one line.
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)
  config = _config()
  explicit = frozenset(config_flags.get_override_values(flags.FLAGS['config']))
  try:
    the_plan = distributed.process_plan(
        mode=_DISTRIBUTED.value,
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
        env=os.environ,
        on_cloud_tpu=distributed.on_cloud_tpu_vm(),
    )
  except distributed.DistributedConfigError as e:
    _exit('Distributed setup error', e)
  if _DRY_RUN.value:
    # No jax.distributed: plans for the flags' process count and this
    # host's devices.
    import jax  # pylint: disable=g-import-not-at-top

    topology = plan.Topology(
        the_plan.num_processes or 1, jax.local_device_count()
    )
    try:
      built = plan.build(
          config, topology=topology, read_data=False, explicit=explicit
      )
    except plan.ConfigError as e:
      _exit('Config error', e)
    print(json.dumps(built.config.to_dict(), indent=2, sort_keys=True))
    return
  if not _WORKDIR.value:
    _exit(
        'Usage error',
        '--workdir is required: the run directory (local or '
        'gs://), e.g. --workdir=/tmp/byol_run; or pass --dry_run.',
    )
  versions = stack.installed()
  try:
    if _REQUIRE_PINNED_STACK.value:  # before the backend starts
      stack.check_pinned(versions, stack.read_pins())
    # Before anything touches the XLA backend (jax.distributed's rule).
    distributed.initialize(the_plan)
    if _REQUIRE_ACCELERATOR.value:
      stack.check_accelerator(versions)
  except stack.StackError as e:
    _exit('Stack error', e)

  def on_checked():
    logging.set_verbosity(verbosity)
    logging.info('Stack: %s', stack.describe(versions))
    logging.info('Visible to this process: %s', stack.resources())

  try:
    run(config, _WORKDIR.value, explicit=explicit, on_checked=on_checked)
  except plan.ConfigError as e:
    _exit('Config error', e)
  except checkpointing.CheckpointRestoreError as e:
    # Unreadable, or hosts that do not share the workdir: the message says
    # what to do.
    _exit('Checkpoint error', e)
  except FileNotFoundError as e:
    _exit('Error', e)  # e.g. a pre-training run's checkpoint disappeared.
  except pretrain.TrainingStopped as e:
    # Diverged or collapsed: not a config error; the message says it all.
    print(f'Training stopped: {" ".join(str(e).split())}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
