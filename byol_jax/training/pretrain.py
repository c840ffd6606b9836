"""The pre-training loop: data -> pmapped update -> metrics and checkpoints."""

import functools
import itertools
import json
import time
from typing import Optional

from absl import logging
from etils import epath
import jax
import numpy as np

from byol_jax import augment as augment_lib
from byol_jax import encoder
from byol_jax import experiment
from byol_jax import modified_init
from byol_jax.data import pipeline
from byol_jax.evaluation import features
from byol_jax.hosts import parallel
from byol_jax.hosts import sync
from byol_jax.training import checkpointing
from byol_jax.training import preemption
from byol_jax.training import resume
from byol_jax.training import workdir as workdir_lib
from byol_jax.training import writers


class TrainingStopped(RuntimeError):
  """Training cannot usefully go on; the message says why and what is kept."""


class NonFiniteLossError(TrainingStopped):
  """The loss or state became NaN or infinite; the last good step is kept."""


class CollapseError(TrainingStopped):
  """The projections stayed collapsed (collapse monitor); checkpoint saved."""


def _checkpointer(config, workdir, async_save: bool = False):
  return checkpointing.Checkpointer(
      workdir_lib.checkpoint_dir(workdir),
      max_to_keep=config.checkpoint.max_to_keep,
      save_interval_secs=config.checkpoint.every_secs or None,
      async_save=async_save,
  )


def check_workdir(run, workdir) -> dict:
  """resume.check_resume on the workdir's checkpoints (on every process)."""
  with _checkpointer(run.config, workdir) as ckpt:
    return resume.check_resume(run, ckpt)


def _stream(config, source, batch_size, **kwargs):
  data = config.data
  return pipeline.make_pretrain_iterator(
      source,
      split=data.pretrain_split,
      global_batch_size=batch_size,
      image_size=data.image_size,
      min_crop_area=data.min_crop_area,
      in_memory_on=data.in_memory_on,
      **kwargs,
  )


def _initial_state(config, num_classes, source):
  """Fresh TrainState (with the modified init of §3.2 when configured)."""
  state = encoder.initial_train_state(config, num_classes)
  if not config.training.modified_init:
    return state
  chunk = config.training.modified_init_chunk_size
  one_host = dict(process_index=0, process_count=1, local_device_count=1)
  batch_size = config.training.modified_init_batch_size
  stream = _stream(config, source, batch_size, seed=config.seed + 1, **one_host)
  images = next(stream)['view1'][0]
  keys = experiment.example_keys(
      jax.random.PRNGKey(config.seed + 2), len(images), None
  )
  # Per-example augmentation, so chunking it changes nothing but memory.
  augment = jax.jit(functools.partial(augment_lib.augment_examples, view=1))
  chunks = [slice(i, i + chunk) for i in range(0, len(images), chunk)]
  images = np.concatenate([augment(keys[c], images[c]) for c in chunks])
  logging.info(
      'Modified init (paper §3.2): calibrated %s on %d images.',
      ', '.join(modified_init.calibrated_components(config.model)),
      len(images),
  )
  return modified_init.apply_to_state(
      state, config.model, num_classes, images, chunk
  )


class _MetricsBuffer:
  """The steps' metrics, on the devices until `flush` logs their means."""

  def __init__(self, writer, ckpt, collapse_below: float = 0.0):
    self._writer, self._ckpt, self.collapse_below = writer, ckpt, collapse_below
    self._pending, self.last = [], {}  # last: the newest logged row
    self.low = 0  # logged rows in a row with collapse std < collapse_below

  def add(self, step: int, metrics) -> None:
    self._pending.append((step, metrics))

  def flush(self) -> None:
    if not self._pending:
      return
    steps, rows = zip(*jax.device_get(self._pending))
    self._pending = []
    values = {k: np.array([r[k][0] for r in rows], np.float64) for k in rows[0]}
    if not (finite := np.isfinite(values['loss'])).all():
      i = np.argmin(finite)
      raise NonFiniteLossError(
          f'loss became {values["loss"][i]} at step {steps[i]}; stopping. '
          f'{_kept(self._ckpt)} Lower training.base_learning_rate or check '
          'the data.'
      )
    self.last = {
        k: float(v[-1] if k in ('lr', 'tau') else v.mean())
        for k, v in values.items()
    }
    self._writer.write(steps[-1], self.last)
    self._writer.console(steps[-1], self.last)
    low = self.last.get('collapse_std_projection', 1.0) < self.collapse_below
    self.low = self.low + 1 if low else 0


def train(run, workdir) -> dict:
  """Pre-trains or resumes `run`: {step, preempted, metrics, state_sha256}."""
  config, source, d = run.config, run.source, run.pretrain
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  lg, batch_size = config.logging, config.training.global_batch_size
  every_steps = config.checkpoint.every_steps
  is_chief = jax.process_index() == 0
  # Async: a save stalls the loop for the device-to-host copy only.
  ckpt = _checkpointer(config, workdir, async_save=True)
  diff = resume.check_resume(run, ckpt)
  _, _, update = experiment.make_update(config, d)
  template = experiment.state_template(config, d.num_classes)
  restored = ckpt.restore_latest(template)
  start = 0 if restored is None else restored.step
  resume.write_config(run, workdir, start_step=start, trajectory_changes=diff)
  if restored is not None:
    state, resumed_s = restored.state, restored.extra.get('wall_time_s', 0)
    logging.info('Resumed from %s at step %d.', ckpt.directory, restored.step)
  else:
    state, resumed_s = _initial_state(config, d.num_classes, source), 0
  start_time = time.time()
  wall_time = lambda: resumed_s + time.time() - start_time
  step = start_step = int(state.step)
  _check_same_state(state, step, 'starting')
  writer = writers.MetricWriter(
      workdir,
      is_chief=is_chief,
      total_steps=d.total_steps,
      images_per_step=batch_size,
  )
  writer.truncate_after(step)
  data = pipeline.prefetch_to_device(
      _stream(config, source, batch_size, seed=config.seed, start_step=step)
  )
  rstate = parallel.replicate(state)
  del state
  p_update = experiment.pmap_update(update)
  if step < d.stop_step:
    # Every process enters the first step's collectives together.
    first_batch = next(data)
    sync.compile_then_sync(
        p_update, rstate, first_batch, name='the training step'
    )
    data = itertools.chain([first_batch], data)
  metrics = _MetricsBuffer(writer, ckpt, lg.collapse_stop_below)
  collapsed = lambda: metrics.low >= lg.collapse_stop_after
  trajectory = resume.trajectory(run)
  preempted, agreements = False, 0  # agreements: all-gathers (logged, tested)

  ckpt.restart_clock()  # training time, not restoring and compiling
  try:
    with preemption.PreemptionWatcher() as watcher:
      while step < d.stop_step:
        rstate, step_metrics = p_update(rstate, next(data))
        step += 1
        metrics.add(step, step_metrics)
        logging_step = step % lg.every_steps == 0 or step == d.stop_step
        knn_step = lg.knn_every_steps and step % lg.knn_every_steps == 0
        if logging_step or knn_step:
          metrics.flush()
        if knn_step:
          o = parallel.unreplicate(rstate)  # frozen, in eval mode
          knn = features.knn_eval(
              config, d.num_classes, source, o.online_params, o.online_state
          )
          writer.write(step, {'knn_top1': knn})
        preempted, time_due, exchanged = preemption.decide(
            watcher, ckpt, logging_step
        )
        agreements += exchanged
        due = time_due or (every_steps and step % every_steps == 0)
        if preempted or due or collapsed() or step == d.stop_step:
          metrics.flush()  # Never checkpoint a state whose loss is not finite.
          extra = {'wall_time_s': wall_time(), 'trajectory': trajectory}
          try:
            ckpt.save(step, parallel.unreplicate(rstate), extra)
          except checkpointing.NonFiniteStateError as e:
            # This step's update; its loss (from before it) was finite.
            raise NonFiniteLossError(
                f'the training state became non-finite at step {step}; '
                f'stopping without saving it. {_kept(ckpt)} ({e})'
            ) from e
        if preempted:
          break
        if collapsed() and step < d.stop_step:  # every process: _MetricsBuffer
          raise CollapseError(
              f'the projections collapsed: collapse_std_projection was below '
              f'logging.collapse_stop_below={metrics.collapse_below:g} for '
              f'{metrics.low} logged steps in a row ('
              f'{metrics.last["collapse_std_projection"]:.4f} at step {step});'
              f' step {step} is saved in {ckpt.directory}. If this variant is '
              'meant to collapse, rerun with '
              '--config.logging.collapse_stop_below=0 to go on from there.'
          )
    metrics.flush()
  finally:
    # Commits a save still being written (also before a non-finite loss).
    ckpt.close()
  writer.close()
  if preempted:
    logging.warning(
        '%s received at step %d: checkpoint saved in %s; '
        'rerun the same command to resume.',
        watcher.signal_name or 'A preemption signal (on another host)',
        step,
        ckpt.directory,
    )
  logging.info(
      'Process %d: %d cross-process agreements in %d steps.',
      jax.process_index(),
      agreements,
      step - start_step,
  )
  fingerprint = _check_same_state(parallel.unreplicate(rstate), step, 'final')
  record = dict(step=step, metrics=metrics.last, state_sha256=fingerprint)
  done_path = workdir_lib.pretrain_done_path(workdir)
  # Complete runs only (not max_steps'); a finished run's rerun leaves it.
  fresh = step > start_step or not done_path.exists()
  if is_chief and fresh and not preempted and step >= d.total_steps:
    done = dict(record, total_steps=d.total_steps, wall_time_s=wall_time())
    done_path.write_text(json.dumps(done))
  return dict(record, preempted=preempted)


def _kept(ckpt) -> str:
  if (latest := ckpt.latest_step()) is None:
    return f'No checkpoint was saved yet in {ckpt.directory}.'
  return f'The last good checkpoint, {ckpt.directory}/{latest}, is kept.'


_DIVERGED = {
    'starting': 'every process must start from the same checkpoint: use one '
    'workdir that all hosts share (gs:// on TPU pods)',
    'final': 'the processes diverged while training (a host-dependent '
    'computation outside the pmapped step?)',
}


def _check_same_state(state, step: int, which: str) -> str:
  """Logs the state's fingerprint; raises unless every process has it."""
  fingerprint = sync.fingerprint(state)
  logging.info(
      'Process %d: %s state (step %d) sha256 %s',
      jax.process_index(),
      which,
      step,
      fingerprint,
  )
  sync.check_same_on_all_processes(
      sync.fingerprint_words(fingerprint),
      f'the {which} training state at step {step} (sha256 prefixes as int32 '
      f'words); {_DIVERGED[which]}',
  )
  return fingerprint


def load_latest_state(
    config, num_classes: int, workdir
) -> Optional[experiment.TrainState]:
  """The workdir's latest checkpointed TrainState (host NumPy), or None."""
  with _checkpointer(config, workdir) as ckpt:
    restored = ckpt.restore_latest(
        experiment.state_template(config, num_classes)
    )
  return None if restored is None else restored.state
