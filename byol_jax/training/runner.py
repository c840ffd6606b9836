"""What `python -m byol_jax.main` runs, importable without main's absl flags."""

import contextlib
import errno
import json
import logging as logging_lib
import os

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from byol_jax.config import plan
from byol_jax.evaluation import linear_eval
from byol_jax.training import checkpointing
from byol_jax.training import pretrain
from byol_jax.training import resume
from byol_jax.training import workdir as workdir_lib


def run(config, workdir: str, *, explicit=frozenset(), on_checked=None) -> dict:
  """Pre-training and linear evaluation (each skipped once done) in `workdir`;
  `explicit`: the fields --config.* set; on_checked(): before compiling."""
  workdir_lib.check_not_a_file(workdir)
  built = plan.build(config, explicit=explicit)
  try:
    with _training_lock(workdir):
      return _run(built, workdir, on_checked)
  except Exception as e:  # pylint: disable=broad-except
    if not _is_disk_full(e):
      raise
    _quiet.disk_full = True
    ckpts = workdir_lib.checkpoint_dir(workdir)
    steps = sorted(int(p.name) for p in ckpts.glob('*') if p.name.isdigit())
    raise checkpointing.DiskFullError(
        'no space left on the device of '
        f'{getattr(e, "filename", None) or workdir} '
        f'({str(e).splitlines()[0][:300]}). The earlier checkpoints are '
        f'intact (steps {steps or "none yet"} in {ckpts}): free space there, '
        'then rerun the same command to resume.'
    ) from e


def _run(run, workdir, on_checked) -> dict:
  config, pretraining = run.config, run.mode == 'pretrain'
  if pretraining:
    pretrain.check_workdir(run, workdir)  # before anything is logged
  if on_checked is not None:
    on_checked()
  logging.info(
      'Config (inputs and derived values):\n%s',
      json.dumps(run.record(), indent=2, sort_keys=True),
  )
  for note in run.notes:
    logging.warning('Note: %s.', note)
  logging.info(
      'Process %d of %d, %d local device(s) of %d: %s',
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
      jax.local_devices(),
  )
  signature = {'eval_inputs': eval_signature(run)}
  if not pretraining:
    return _done_eval(run, workdir, run.probe.checkpoint_step) or (
        linear_eval.run_linear_eval_from_workdir(run, workdir, extra=signature)
    )
  summary = pretrain.train(run, workdir)
  step = summary['step']
  if (
      config.eval.after_pretraining
      and not summary['preempted']
      and step >= run.pretrain.total_steps
  ):
    summary['eval'] = _done_eval(run, workdir, step)
    if summary['eval'] is None:
      state = pretrain.load_latest_state(config, run.data.num_classes, workdir)
      summary['eval'] = linear_eval.run_linear_eval(
          run,
          workdir,
          state.online_params,
          state.online_state,
          extra={'checkpoint_step': step, **signature},
      )
  return summary


@contextlib.contextmanager
def _training_lock(workdir):
  """workdir.TrainingLock held by process 0; every process stops if refused."""
  lock, error = workdir_lib.TrainingLock(workdir), None
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
          'line says why).'
      )
  if error is not None:
    raise error
  try:
    yield
  finally:
    lock.release()


def _is_disk_full(error) -> bool:
  """Whether `error` or one it chains says the disk (or quota) is full (orbax
  0.12.8: ValueError('RESOURCE_EXHAUSTED: ... No space left on device'); not
  RESOURCE_EXHAUSTED alone: XLA's for device memory too)."""
  full, seen = (errno.ENOSPC, errno.EDQUOT), set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if getattr(error, 'errno', None) in full or any(
        os.strerror(code) in str(error) for code in full
    ):
      return True
    error = error.__cause__ or error.__context__
  return False


def eval_signature(run) -> dict:
  """What a linear evaluation's numbers depend on besides the encoder (flat)."""
  config = run.config
  tree = {
      'eval': config.eval.to_dict(),
      'seed': config.seed,
      'data': config.data.to_dict(),
      'splits': dict(run.data.splits),
      'num_classes': run.data.num_classes,
  }
  return json.loads(json.dumps(resume.flatten(tree)))


def _done_eval(run, workdir, step):
  """eval_results.json when it holds this step's evaluation under the run."""
  path = workdir_lib.eval_results_path(workdir)
  results = json.loads(path.read_text()) if path.exists() else {}
  done = {'checkpoint_step': step, 'eval_inputs': eval_signature(run)}
  if any(results.get(k) != v for k, v in done.items()):
    return None
  logging.info('Linear evaluation of step %d already in %s.', step, path)
  return results


def _quiet(record) -> bool:
  """Drops orbax's and etils' INFO records and full-disk errors (run() says
  it in one line; orbax's threads would log it until exit)."""
  if not any(f'/{lib}/' in record.pathname for lib in ('orbax', 'etils')):
    return True
  if record.levelno < logging_lib.WARNING or _quiet.disk_full:
    return False
  error = record.exc_info[1] if record.exc_info else None
  return not (
      _is_disk_full(error) or _is_disk_full(Exception(record.getMessage()))
  )


_quiet.disk_full = False  # set by run() when it raises DiskFullError


def quiet_libraries() -> None:
  """Keeps the console to our progress lines (entry points call this)."""
  logging.get_absl_handler().addFilter(_quiet)
