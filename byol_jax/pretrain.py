"""The pre-training loop: data -> pmapped update -> metrics and checkpoints.

Resume is exact: the checkpoint holds the whole TrainState (parameters,
target, optimizer state, base rng, step), the data stream is a function of
(seed, step) and restarts at the restored step without decoding the skipped
batches, and per-step randomness is fold_in(rng, step). A run stopped at step
k and resumed ends bit-identical (on CPU) to an uninterrupted one.

Failure handling: SIGTERM/SIGINT (preemption) -> checkpoint and clean exit;
a non-finite loss -> NonFiniteLossError naming the first bad step, and no
checkpoint of that state is written (the last good one stays).

Multi-process (one process per host, all running this loop in lock-step):
each reads its own shard of the data (pipeline's default process_index /
process_count), the pmapped step's collectives span every host's devices, only
process 0 writes config.json, metrics, TensorBoard and pretrain_done.json, and
every process takes part in each checkpoint save and restore (orbax writes the
host-side arrays from process 0). The processes check that they start from,
and end with, the same TrainState (a sha256 fingerprint), and agree on a
preemption signal and on the checkpoint clock at logging steps, since a
signal may reach only some hosts, clocks differ, and every host must join a
save.

Speed: the step is compiled once per run; between logging steps the loop
only dispatches steps (no device value is read on the host, no process
communicates); scheduled checkpoints are written asynchronously.
"""

import datetime
import functools
import itertools
import json
import time
from typing import Optional

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import checkpointing
from byol_jax import distributed
from byol_jax import experiment
from byol_jax import modified_init
from byol_jax import plan
from byol_jax import preemption
from byol_jax import train_state as ts
from byol_jax import writers
from byol_jax.data import pipeline


class NonFiniteLossError(RuntimeError):
  """Raised when the training loss becomes NaN or infinite."""


CONFIG_FILE = 'config.json'
HISTORY_FILE = 'config_history.jsonl'


def check_resume(config, ckpt: checkpointing.Checkpointer) -> dict:
  """Compares the run's trajectory with the latest checkpoint's.

  Args:
    config: the built config.
    ckpt: the run's Checkpointer.

  Returns:
    {field: (old, new)} of the changes the run resumes under (empty when
    nothing changed, there is no checkpoint, or the checkpoint predates
    recorded trajectories).

  Raises:
    plan.ConfigError: the trajectory changed and
      checkpoint.allow_changed_config is False; the workdir is untouched.
  """
  latest = ckpt.latest_extra()
  if latest is None:
    return {}
  step, extra = latest
  old = extra.get('trajectory')
  if old is None:
    logging.warning('Checkpoint %s records no config trajectory (written by '
                    'an older version): resuming without checking it.',
                    ckpt.directory / str(step))
    return {}
  diff = plan.changes(plan.upgrade_trajectory(old), plan.trajectory(config))
  structural = [k for k in diff if k.split('.')[0] in ('method', 'model') or
                k == 'derived.num_classes']
  if structural:
    raise plan.ConfigError(
        f'{ckpt.directory} holds step {step} of a run with another network: '
        f'{plan.describe_changes({k: diff[k] for k in structural})}; a '
        'checkpoint cannot be resumed under another architecture (not even '
        'with checkpoint.allow_changed_config): use a fresh --workdir.')
  if diff and not config.checkpoint.allow_changed_config:
    raise plan.ConfigError(
        f'{ckpt.directory} holds step {step} of a run trained under another '
        f'config: {plan.describe_changes(diff)}. Resume with the old values, '
        'use a fresh --workdir, or pass '
        '--config.checkpoint.allow_changed_config=true to resume anyway (e.g. '
        f'to extend a finished run; recorded in {HISTORY_FILE}).')
  if diff:
    logging.warning('Resuming step %d under a changed config (allowed by '
                    'checkpoint.allow_changed_config): %s', step,
                    plan.describe_changes(diff))
  return diff


def _checkpointer(config, workdir,
                  async_save: bool = False) -> checkpointing.Checkpointer:
  return checkpointing.Checkpointer(
      epath.Path(workdir) / 'checkpoints',
      max_to_keep=config.checkpoint.max_to_keep,
      save_interval_steps=config.checkpoint.every_steps or None,
      save_interval_secs=config.checkpoint.every_secs or None,
      async_save=async_save)


def check_workdir(config, workdir) -> dict:
  """check_resume on the workdir's checkpoints, before anything is written.

  Every process calls it (the check gathers the processes' latest steps).

  Returns:
    The allowed trajectory changes (see check_resume).

  Raises:
    plan.ConfigError: see check_resume.
  """
  with _checkpointer(config, workdir) as ckpt:
    return check_resume(config, ckpt)


def write_config(config, workdir: epath.Path, *, start_step: int,
                 trajectory_changes: dict) -> None:
  """Writes WORKDIR/config.json and appends to the config history (chief).

  config.json is the built config (inputs and derived values). A line is
  appended to config_history.jsonl when the run starts for the first time or
  under a config that differs from the previous config.json: the time, the
  step it starts from, and every changed field (old, new).
  """
  if jax.process_index() != 0:
    return
  path = workdir / CONFIG_FILE
  new = json.loads(config.to_json_best_effort())
  old = json.loads(path.read_text()) if path.exists() else None
  diff = {} if old is None else plan.changes(plan.flatten(old),
                                             plan.flatten(new))
  if old is None or diff or trajectory_changes:
    entry = {'time': datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec='seconds'), 'start_step': start_step,
             'config_changes': diff, 'trajectory_changes': trajectory_changes}
    with (workdir / HISTORY_FILE).open('a') as f:
      f.write(json.dumps(entry) + '\n')
  text = config.to_json_best_effort(indent=2)
  if old is None or path.read_text() != text:
    path.write_text(text)


def _initial_state(config, method, optimizer, source):
  """Fresh TrainState (with the modified init of §3.2 when configured)."""
  rng = jax.random.PRNGKey(config.seed)
  # Jitted: one compilation instead of one per initialiser op, which matters
  # on multi-host runs where every host initialises and hosts other than
  # process 0 never hit the persistent compilation cache. (Same values as
  # the eager init, bit for bit, on the tiny GN+WS and BN configs on CPU.)
  init = jax.jit(functools.partial(ts.init_train_state, method, optimizer))
  state = init(rng, experiment.sample_images(config))
  if config.training.modified_init:
    # A batch of augmented view-1 images, from its own data seed.
    batch = next(pipeline.make_pretrain_iterator(
        source, split=config.data.pretrain_split,
        global_batch_size=config.training.modified_init_batch_size,
        image_size=config.data.image_size, seed=config.seed + 1,
        process_index=0, process_count=1, local_device_count=1,
        min_crop_area=config.data.min_crop_area,
        in_memory_on=config.data.in_memory_on))
    images = batch['view1'][0]
    keys = ts.example_keys(jax.random.PRNGKey(config.seed + 2),
                           images.shape[0], None)
    # Per-example augmentation, so chunking it changes nothing but memory.
    chunk = config.training.modified_init_chunk_size
    augment = jax.jit(functools.partial(experiment.byol_augment, view=1))
    images = np.concatenate([
        np.asarray(augment(keys[i:i + chunk], jnp.asarray(images[i:i + chunk])))
        for i in range(0, len(images), chunk)])
    state = modified_init.apply_to_state(
        state, config.model, config.derived.num_classes, images,
        with_predictor=config.method == 'byol', chunk_size=chunk)
    logging.info('Modified init (paper §3.2): calibrated %s on %d images.',
                 ', '.join(modified_init.calibrated_components(config.model)),
                 images.shape[0])
  return state


def _first_non_finite(history):
  for step, metrics in history:
    if not np.isfinite(metrics['loss']):
      return step, metrics['loss']
  return None


def run(config, workdir, *, source) -> dict:
  """Pre-trains (or resumes) in `workdir`.

  Args:
    config: a built config (plan.build) in mode 'pretrain'.
    workdir: run directory (local path or gs://); created if needed.
    source: the data source plan.build opened.

  Returns:
    {'step': last step, 'preempted': bool, 'metrics': last logged metrics,
    'state_sha256': the final state's fingerprint}.

  Raises:
    plan.ConfigError: the workdir's checkpoint was trained under another
      trajectory (see check_resume); nothing is written.
    NonFiniteLossError: the loss or the state became NaN/Inf.
  """
  plan.check_built(config)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  t, d = config.training, config.derived
  # Asynchronous saves: a scheduled checkpoint stalls the loop for the
  # device-to-host copy only; ckpt.close() below waits for the writes.
  ckpt = _checkpointer(config, workdir, async_save=True)
  trajectory_changes = check_resume(config, ckpt)
  trajectory = plan.trajectory(config)
  method, optimizer, update = experiment.make_update(config)
  restored = ckpt.restore_latest(experiment.state_template(config))
  write_config(config, workdir, start_step=0 if restored is None else
               int(restored.step), trajectory_changes=trajectory_changes)
  # Wall time summed over every segment of a resumed run.
  wall_base = 0. if restored is None else float(
      (restored.extra or {}).get('wall_time_s', 0.))
  start_time = time.time()
  wall_time = lambda: wall_base + time.time() - start_time
  if restored is not None:
    state = restored.state
    logging.info('Resumed from %s at step %d.', ckpt.directory, restored.step)
  else:
    state = _initial_state(config, method, optimizer, source)
  step = start_step = int(state.step)
  _check_same_state(state, step, 'starting')
  stop_at = d.stop_step
  writer = writers.MetricWriter(workdir, is_chief=jax.process_index() == 0,
                                total_steps=d.total_steps,
                                images_per_step=t.global_batch_size)
  writer.truncate_after(step)
  logging.info('Process %d of %d reads its own data shard: %d of the %d '
               'images of each step, %d per local device.',
               jax.process_index(), jax.process_count(),
               t.global_batch_size // jax.process_count(), t.global_batch_size,
               t.global_batch_size // jax.device_count())
  data = pipeline.prefetch_to_device(pipeline.make_pretrain_iterator(
      source, split=config.data.pretrain_split,
      global_batch_size=t.global_batch_size, image_size=config.data.image_size,
      seed=config.seed, start_step=step,
      min_crop_area=config.data.min_crop_area,
      in_memory_on=config.data.in_memory_on))
  rstate = ts.replicate(state)
  del state
  p_update = ts.pmap_update(update)
  if step < stop_at:
    # Compiled before the loop, then a barrier: every process enters the
    # first step's collectives together (see distributed.barrier).
    first_batch = next(data)
    distributed.compile_then_sync(p_update, rstate, first_batch,
                                  name='the training step')
    data = itertools.chain([first_batch], data)
  history, last, preempted = [], {}, False
  agreements = 0  # cross-process all-gathers in the loop (logged, tested).

  def save(step, force=False, time_due=None):
    if force or ckpt.should_save(step, time_due=time_due):
      flush_metrics()  # Never checkpoint a state whose loss is not finite.
      host = jax.device_get(ts.unreplicate(rstate))
      try:
        ckpt.save(step, host, {'data_step': step, 'time': time.time(),
                               'wall_time_s': wall_time(),
                               'trajectory': trajectory,
                               'trajectory_sha256': plan.fingerprint(
                                   trajectory)}, force=True)
      except checkpointing.NonFiniteStateError as e:
        # The weights went non-finite in this step's update; its loss (computed
        # before the update) was still finite.
        raise NonFiniteLossError(
            f'the training state became non-finite at step {step}; stopping '
            f'without saving it. {_kept(ckpt)} ({e})') from e

  def flush_metrics():
    nonlocal history, last
    if not history:
      return
    history = [(s, jax.tree.map(lambda x: x[0], m))
               for s, m in jax.device_get(history)]
    bad = _first_non_finite(history)
    if bad is not None:
      raise NonFiniteLossError(
          f'loss became {bad[1]} at step {bad[0]}; stopping. {_kept(ckpt)} '
          'Lower training.base_learning_rate or check the data.')
    last_step, last = history[-1]
    last = {k: float(v) for k, v in last.items()}
    writer.write(last_step, last)
    writer.console(last_step, last)
    history = []

  # No host-device or cross-host synchronisation at other steps than logging
  # steps (every logging.every_steps, and the last): the pmapped steps are
  # dispatched asynchronously, their metrics stay on the devices until the
  # logging step fetches them all, and the decisions that need every
  # process (preemption, the checkpoint clock) are agreed there.
  # The checkpoint clock counts training time, not restoring and compiling.
  ckpt.restart_clock()
  try:
    with preemption.PreemptionWatcher() as watcher:
      while step < stop_at:
        rstate, metrics = p_update(rstate, next(data))
        step += 1
        history.append((step, metrics))
        sync = step % config.logging.every_steps == 0 or step == stop_at
        if sync:
          flush_metrics()
        if (config.logging.knn_every_steps and
            step % config.logging.knn_every_steps == 0):
          flush_metrics()
          writer.write(step, {'knn_top1': knn_monitor(config, source, rstate)})
        preempt, time_due, agreed = preemption.decide(watcher, ckpt, sync)
        agreements += agreed
        if preempt:
          flush_metrics()
          save(step, force=True)
          ckpt.wait()  # The process is about to exit: commit first.
          logging.warning('%s received at step %d: checkpoint saved in %s; '
                          'rerun the same command to resume.',
                          watcher.signal_name or 'A preemption signal (on '
                          'another host)', step, ckpt.directory)
          preempted = True
          break
        save(step, force=step == stop_at, time_due=time_due)
    flush_metrics()
  finally:
    # Commits a save still being written (the final one, or the last good
    # one when the run stops on a non-finite loss) before returning.
    ckpt.close()
  writer.close()
  logging.info('Process %d: %d cross-process agreements in %d steps.',
               jax.process_index(), agreements, step - start_step)
  fingerprint = _check_same_state(ts.unreplicate(rstate), step, 'final')
  done_path = workdir / 'pretrain_done.json'
  # Written when the run is complete (not when max_steps stopped it early);
  # a rerun of a finished run trains nothing and leaves the record alone.
  if (jax.process_index() == 0 and not preempted and
      step >= d.total_steps and
      (step > start_step or not done_path.exists())):
    done_path.write_text(json.dumps(
        {'step': step, 'total_steps': d.total_steps, 'metrics': last,
         'wall_time_s': wall_time(), 'state_sha256': fingerprint}))
  return {'step': step, 'preempted': preempted, 'metrics': last,
          'state_sha256': fingerprint}


def _kept(ckpt) -> str:
  latest = ckpt.latest_step()
  if latest is None:
    return f'No checkpoint was saved yet in {ckpt.directory}.'
  return (f'The last good checkpoint (step {latest}) in {ckpt.directory} is '
          'kept.')


def _check_same_state(state, step: int, which: str) -> str:
  """Logs the state's fingerprint; raises unless every process has it."""
  fingerprint = distributed.fingerprint(state)
  logging.info('Process %d: %s state (step %d) sha256 %s', jax.process_index(),
               which, step, fingerprint)
  hint = ('every process must start from the same checkpoint: use one '
          'workdir that all hosts share (gs:// on TPU pods)' if
          which == 'starting' else 'the processes diverged while training '
          '(a host-dependent computation outside the pmapped step?)')
  distributed.check_same_on_all_processes(
      distributed.fingerprint_words(fingerprint),
      f'the {which} training state at step {step} (sha256 prefixes as int32 '
      f'words); {hint}')
  return fingerprint


def knn_monitor(config, source, rstate) -> float:
  """kNN top-1 of the online encoder (frozen, eval mode)."""
  from byol_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
  state = ts.unreplicate(rstate)
  return linear_eval.knn_eval(config, source, state.online_params,
                              state.online_state)


def load_latest_state(config, workdir) -> Optional[ts.TrainState]:
  """The latest checkpointed TrainState of a workdir, or None."""
  ckpt = checkpointing.Checkpointer(epath.Path(workdir) / 'checkpoints')
  restored = ckpt.restore_latest(experiment.state_template(config))
  ckpt.close()
  return None if restored is None else restored.state
