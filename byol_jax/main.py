r"""Entry point: pre-training or linear evaluation, chosen by the config.

    python -m byol_jax.main --config=experiments/gn_ws.py --workdir=/tmp/run
    python -m byol_jax.main --config=experiments/ablation.py:encoder=bn,tiny \
        --workdir=/tmp/abl --config.training.total_steps=100
    python -m byol_jax.main --config=experiments/linear_eval.py \
        --config.eval.pretrain_workdir=/tmp/run --workdir=/tmp/eval

A rerun on a workdir with a checkpoint resumes it (not under a changed config);
`--dry_run` prints the built config as JSON, writing nothing and reading no
image. Multi-process: the same command on every host.
"""

import json
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
import jax
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
flags.DEFINE_string('workdir', None, 'Run directory: local or gs://.')
flags.DEFINE_bool('dry_run', False, 'Print the built config as JSON, exit.')
flags.DEFINE_enum(
    'distributed',
    'auto',
    distributed.MODES,
    'auto: from the flags below, BYOL_*, SLURM or a TPU VM; off: one process.',
)
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Processes (hosts) in the run.')
flags.DEFINE_integer('process_id', None, 'This one, in [0, num_processes).')
flags.DEFINE_bool('require_accelerator', False, "Stop on JAX's CPU backend.")
flags.DEFINE_bool(
    'require_pinned_stack', False, 'Stop on versions not in constraints.txt.'
)
FLAGS = flags.FLAGS

run = runner.run  # the experiment itself (byol_jax/training/runner.py).

# The one line's prefix (exit code 2) of each expected failure; first match.
_ERRORS = {
    plan.ConfigError: 'Config error',
    distributed.DistributedConfigError: 'Distributed setup error',
    stack.StackError: 'Stack error',
    # Unreadable, or hosts that do not share the workdir.
    checkpointing.CheckpointRestoreError: 'Checkpoint error',
    FileNotFoundError: 'Error',  # e.g. a pre-training run's checkpoint went.
}


_FORM = 'a config file is as experiments/gn_ws.py: get_config() -> ConfigDict'


def _exit(kind: str, message, code: int = 2):
  """One line on stderr, then exit: the user's to fix, no stack trace."""
  print(f'{kind}: {" ".join(str(message).split())}', file=sys.stderr)
  sys.exit(code)


def parse_flags(argv):
  """absl's flag parsing (argv without the parsed flags), errors in one line."""
  config_arg = next((a for a in argv if a.startswith('--config=')), '--config')
  try:
    return FLAGS(argv)
  except (SyntaxError, ImportError) as e:  # the config file's own code
    _exit('Config error', f'{config_arg}: {type(e).__name__}: {e}')
  except (KeyError, AttributeError) as e:  # an override of no field
    text = str(e)
    if "attribute 'get_config'" in text:
      _exit('Config error', f'{config_arg}: no get_config(); {_FORM}')
    name = (re.findall(r'[A-Za-z_]\w*', text) or [text])[0]
    given = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    flag = next((f for f in given if name in f.split('.')), '--config.*')
    hint = re.search(r'Did you mean "([^"]+)"', text)
    hint = f' (did you mean {hint.group(1)!r}?)' if hint else ''
    why = f'the config has no field {name!r}{hint}; --dry_run prints them'
    if name == 'derived':
      why = (
          'derived values are computed at start-up and cannot be set; set '
          'the input instead (e.g. training.total_steps)'
      )
    _exit('Config error', f'{flag}: {why}.')
  except (flags.Error, ValueError, TypeError, OSError) as e:
    text = str(e).strip() or type(e).__name__
    if 'Error whilst parsing config file' in text:  # get_config's traceback
      found = re.findall(r'^\s*[\w.]*(?:Error|Exception): (.*?)$', text, re.M)
      text = (found or text.splitlines())[-1]
    text = text.replace(
        'invalid literal for int() with base 10', 'not an integer'
    )
    _exit('Config error', text.splitlines()[0])


def main(argv):
  """Runs `python -m byol_jax.main`: pre-training or linear evaluation.

  An expected failure ends with one line on stderr and exit code 2; a diverged
  or collapsed run with 'Training stopped: ...' and exit code 1.
  """
  if len(argv) > 1:
    _exit(
        'Usage error',
        f'unexpected arguments {argv[1:]}; flags only, '
        'e.g. --config=experiments/gn_ws.py --workdir=/tmp/run.',
    )
  if _CONFIG.value is None:
    _exit(
        'Usage error',
        '--config is required, e.g. '
        '--config=experiments/gn_ws.py:tiny (experiments/ lists them).',
    )
  runner.quiet_libraries()
  # Until the run is built and its workdir checked, only warnings and the
  # error line reach the console: a bad input reads as one line.
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)
  flag, config = FLAGS['config'].serialize(), _CONFIG.value
  try:
    config.to_dict()  # a config file that failed to load raises here.
  except OSError as e:
    errno = re.search(r'\[Errno \d+\].*', str(e))
    _exit('Config error', f'{flag}: {errno.group(0) if errno else e}')
  except AttributeError:
    _exit('Config error', f'{flag}: get_config() gave {config!r}; {_FORM}')
  explicit = frozenset(config_flags.get_override_values(FLAGS['config']))
  try:
    processes = distributed.process_plan(
        mode=FLAGS.distributed,
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
        env=os.environ,
        on_cloud_tpu=distributed.on_cloud_tpu_vm(),
    )
    if FLAGS.dry_run:
      # No jax.distributed: the flags' process count, this host's devices.
      hosts = processes.num_processes or 1
      topology = plan.Topology(hosts, jax.local_device_count())
      built = plan.build(
          config, topology=topology, read_data=False, explicit=explicit
      )
      print(json.dumps(built.record(), indent=2, sort_keys=True))
      return
    if not FLAGS.workdir:
      _exit(
          'Usage error',
          '--workdir is required: the run directory (local or '
          'gs://), e.g. --workdir=/tmp/byol_run; or pass --dry_run.',
      )
    versions = stack.installed()
    if FLAGS.require_pinned_stack:  # before the backend starts
      stack.check_pinned(versions, stack.read_pins())
    # Before anything touches the XLA backend (jax.distributed's rule).
    distributed.initialize(processes)
    if FLAGS.require_accelerator:
      stack.check_accelerator(versions)

    def on_checked():
      logging.set_verbosity(verbosity)
      logging.info('Stack: %s', stack.describe(versions))
      logging.info('Visible to this process: %s', stack.resources())

    run(config, FLAGS.workdir, explicit=explicit, on_checked=on_checked)
  except pretrain.TrainingStopped as e:  # diverged or collapsed: says it all
    _exit('Training stopped', e, code=1)
  except tuple(_ERRORS) as e:
    _exit(next(v for k, v in _ERRORS.items() if isinstance(e, k)), e)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
