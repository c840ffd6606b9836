"""Runs one experiment config in a workdir: what `python -m byol_jax.main` does.

Kept apart from main.py, which defines absl flags when imported, so that other
entry points (byol_jax.reproduce, tests) run experiments without its flags.
"""

import contextlib
import errno
import json
import logging as logging_lib
import os

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from byol_jax import plan
from byol_jax import resume
from byol_jax import workdir as workdir_lib


def run(config, workdir: str, *, topology=None, explicit=frozenset(),
        on_checked=None) -> dict:
  """Builds the run from `config` and runs it in `workdir`; returns a summary.

  Pre-training (resumed from the workdir's latest checkpoint, if any), then
  linear evaluation of the final encoder when config.eval.after_pretraining
  (skipped when WORKDIR/eval_results.json already holds it: a rerun of a
  finished run does nothing). With eval.pretrain_workdir set: linear
  evaluation of that run's encoder only.

  Args:
    config: an experiment config of inputs (get_config + overrides).
    workdir: the run directory (local or gs://).
    topology: plan.Topology (default: this process's devices).
    explicit: dotted names of the fields set by `--config.*` overrides
      (plan.build).
    on_checked: called once the run is built and the workdir's checkpoint
      checked against it (main.py turns INFO logging back on there, so that
      a refused start prints one line).

  Returns:
    pretrain.run's summary (plus 'eval' when evaluated), or the linear
    evaluation's results in 'linear_eval' mode.

  Raises:
    plan.ConfigError: before anything compiles, for a config that cannot run
      (or would resume a checkpoint trained under another config), a
      workdir that is a file, or one another run writes
      (workdir.TrainingLock, taken here for pre-training and evaluation).
    checkpointing.DiskFullError: the workdir's disk filled up.
  """
  workdir_lib.check_not_a_file(workdir)
  built = plan.build(config, topology=topology, explicit=explicit)
  try:
    with _training_lock(workdir):
      return _run(built, workdir, on_checked)
  except Exception as e:  # pylint: disable=broad-except
    if not _is_disk_full(e):
      raise
    from byol_jax import checkpointing  # pylint: disable=g-import-not-at-top
    _QuietLibraries.disk_full = True
    where = getattr(e, 'filename', None) or workdir
    ckpts = workdir_lib.checkpoint_dir(workdir)
    steps = sorted(int(p.name) for p in ckpts.glob('*') if p.name.isdigit())
    raise checkpointing.DiskFullError(
        f'no space left on the device of {where} '
        f'({str(e).splitlines()[0][:300]}). The earlier checkpoints are '
        f'intact (steps {steps or "none yet"} in {ckpts}): free space there, '
        'then rerun the same command to resume.') from e


def _run(built, workdir, on_checked) -> dict:
  """run() once the workdir is this process's to write."""
  config, source = built.config, built.source
  from byol_jax import pretrain  # pylint: disable=g-import-not-at-top
  if config.derived.mode == 'pretrain':
    pretrain.check_workdir(config, workdir)  # before anything is logged
  if on_checked is not None:
    on_checked()
  logging.info('Config (inputs and derived values):\n%s', config)
  for note in config.derived.notes:
    logging.warning('Note: %s.', note)
  logging.info('Process %d of %d, %d local device(s) of %d: %s',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  from byol_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
  if config.derived.mode == 'linear_eval':
    done = _done_eval(config, workdir, config.derived.pretrain_checkpoint_step)
    if done is not None:
      return done
    return linear_eval.run_linear_eval_from_workdir(
        config, workdir, source=source,
        extra={'eval_inputs': eval_signature(config)})
  summary = pretrain.run(config, workdir, source=source)
  if (config.eval.after_pretraining and not summary['preempted'] and
      summary['step'] >= config.derived.total_steps):
    done = _done_eval(config, workdir, summary['step'])
    if done is not None:
      summary['eval'] = done
      return summary
    state = pretrain.load_latest_state(config, workdir)
    summary['eval'] = linear_eval.run_linear_eval(
        config, workdir, state.online_params, state.online_state,
        source=source, extra={'checkpoint_step': summary['step'],
                              'eval_inputs': eval_signature(config)})
  return summary


@contextlib.contextmanager
def _training_lock(workdir):
  """workdir.TrainingLock, held by process 0 for the whole run.

  Every process learns whether process 0 got it (one all-gather, on several
  processes) and stops if not: a second run on a workdir stops at once.
  """
  lock = workdir_lib.TrainingLock(workdir)
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except workdir_lib.WorkdirError as e:
      error = e
  if jax.process_count() > 1:
    refused = multihost_utils.process_allgather(np.int32(error is not None))
    if np.any(refused) and error is None:
      error = workdir_lib.WorkdirError(
          f'--workdir={workdir}: process 0 could not lock it (its error '
          'line says why).')
  if error is not None:
    raise error
  try:
    yield
  finally:
    if jax.process_index() == 0:
      lock.release()


def _is_disk_full(error) -> bool:
  """Whether `error`, or one it chains, says the disk (or quota) is full.

  On a full tmpfs orbax 0.12.8 raised tensorstore's ValueError('RESOURCE_
  EXHAUSTED: ... No space left on device [os_error_code='28']') (from the
  next save or the final wait); Python's own writes raise OSError(ENOSPC).
  """
  full, seen = (errno.ENOSPC, errno.EDQUOT), set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    text = str(error)
    # Not RESOURCE_EXHAUSTED alone: XLA says that for device memory too.
    if (getattr(error, 'errno', None) in full or
        any(os.strerror(code) in text for code in full)):
      return True
    error = error.__cause__ or error.__context__
  return False


def eval_signature(config) -> dict:
  """What a linear evaluation's numbers depend on besides the encoder.

  Args:
    config: the built run config (ml_collections.ConfigDict with a `derived`
      section, as configs.build returns it).

  Returns:
    A flat {field: value} dict, as JSON gives it back (tuples as lists).
  """
  return json.loads(json.dumps(resume.flatten({
      'eval': config.eval.to_dict(), 'seed': config.seed,
      'data': config.data.to_dict(), 'splits': config.derived.splits.to_dict(),
      'num_classes': config.derived.num_classes})))


def _done_eval(config, workdir, step):
  """eval_results.json when it holds this step's evaluation under config."""
  path = workdir_lib.eval_results_path(workdir)
  if not path.exists():
    return None
  results = json.loads(path.read_text())
  if (results.get('checkpoint_step') == step and
      results.get('eval_inputs') == eval_signature(config)):
    logging.info('Linear evaluation of step %d already in %s; skipped.', step,
                 path)
    return results
  return None


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO records of chatty libraries (orbax logs every save step).

  And orbax's errors of a save that filled the disk, with the ones its other
  threads log until the process exits: run() says it in one line.
  """
  disk_full = False  # set by run() when it raises DiskFullError

  def filter(self, record):
    if not any(f'/{lib}/' in record.pathname for lib in ('orbax', 'etils')):
      return True
    if record.levelno < logging_lib.WARNING or self.disk_full:
      return False
    error = record.exc_info[1] if record.exc_info else None
    return not (_is_disk_full(error) or
                _is_disk_full(Exception(record.getMessage())))


def quiet_libraries() -> None:
  """Keeps the console to our progress lines (entry points call this)."""
  logging.get_absl_handler().addFilter(_QuietLibraries())
