"""The pre-training loop: data -> pmapped update -> metrics and checkpoints.

Resume is exact: the checkpoint holds the whole TrainState, the data stream is
a function of (seed, step) and restarts at the restored step, and per-step
randomness is fold_in(rng, step): a run stopped at step k and resumed ends
bit-identical (on CPU) to an uninterrupted one.

Multi-process: every process runs this loop in lock-step on its own data
shard; they check that they start and end with the same state (sha256), and
agree on preemption and the checkpoint clock at logging steps only (a signal
may reach only some hosts, clocks differ, every host must join a save).
Between logging steps the loop only dispatches steps: no device value is read,
no process communicates; scheduled checkpoints are written asynchronously.
"""

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
from byol_jax import experiment
from byol_jax import hosts
from byol_jax import modified_init
from byol_jax import parallel
from byol_jax import preemption
from byol_jax import resume
from byol_jax import workdir as workdir_lib
from byol_jax import writers
from byol_jax.data import augment as augment_lib
from byol_jax.data import pipeline
from byol_jax.evaluation import features


class TrainingStopped(RuntimeError):
  """Training cannot usefully go on; the message says why and what is kept."""


class NonFiniteLossError(TrainingStopped):
  """The loss or state became NaN or infinite; the last good step is kept."""


class CollapseError(TrainingStopped):
  """The projections stayed collapsed (collapse monitor); checkpoint saved."""


def _checkpointer(
    config, workdir, async_save: bool = False
) -> checkpointing.Checkpointer:
  return checkpointing.Checkpointer(
      workdir_lib.checkpoint_dir(workdir),
      max_to_keep=config.checkpoint.max_to_keep,
      save_interval_steps=config.checkpoint.every_steps or None,
      save_interval_secs=config.checkpoint.every_secs or None,
      async_save=async_save,
  )


def check_workdir(config, workdir) -> dict:
  """resume.check_resume on the workdir's checkpoints (on every process)."""
  with _checkpointer(config, workdir) as ckpt:
    return resume.check_resume(config, ckpt)


def _initial_state(config, method, optimizer, source):
  """Fresh TrainState (with the modified init of §3.2 when configured)."""
  rng = jax.random.PRNGKey(config.seed)
  # Jitted: one compilation instead of one per initialiser op, which matters
  # on multi-host runs where every host initialises and hosts other than
  # process 0 never hit the persistent compilation cache. (Same values as
  # the eager init, bit for bit, on the tiny GN+WS and BN configs on CPU.)
  init = jax.jit(
      functools.partial(experiment.init_train_state, method, optimizer)
  )
  state = init(rng, experiment.sample_images(config))
  if config.training.modified_init:
    # A batch of augmented view-1 images, from its own data seed.
    batch = next(
        pipeline.make_pretrain_iterator(
            source,
            split=config.data.pretrain_split,
            global_batch_size=config.training.modified_init_batch_size,
            image_size=config.data.image_size,
            seed=config.seed + 1,
            process_index=0,
            process_count=1,
            local_device_count=1,
            min_crop_area=config.data.min_crop_area,
            in_memory_on=config.data.in_memory_on,
        )
    )
    images = batch['view1'][0]
    keys = experiment.example_keys(
        jax.random.PRNGKey(config.seed + 2), images.shape[0], None
    )
    # Per-example augmentation, so chunking it changes nothing but memory.
    chunk = config.training.modified_init_chunk_size
    augment = jax.jit(functools.partial(augment_lib.augment_examples, view=1))
    images = np.concatenate(
        [
            np.asarray(
                augment(keys[i : i + chunk], jnp.asarray(images[i : i + chunk]))
            )
            for i in range(0, len(images), chunk)
        ]
    )
    state = modified_init.apply_to_state(
        state, config.model, config.derived.num_classes, images, chunk
    )
    logging.info(
        'Modified init (paper §3.2): calibrated %s on %d images.',
        ', '.join(modified_init.calibrated_components(config.model)),
        images.shape[0],
    )
  return state


class _MetricsBuffer:
  """The steps' metrics since the last flush, left on the devices till then.

  `flush` fetches them in one transfer, stops at the first non-finite loss
  (naming its step) and logs each metric's mean over the interval, except the
  schedules' (SCHEDULED), which are the newest step's. `low` counts logged rows
  in a row whose collapse_std_projection is below `collapse_below`, from
  pmean'd metrics: every process counts the same without communicating.
  """

  SCHEDULED = ('lr', 'tau')

  def __init__(
      self, writer: writers.MetricWriter, ckpt, collapse_below: float = 0.0
  ):
    self._writer, self._ckpt = writer, ckpt
    self._pending = []  # (step, replicated metrics), not yet on the host
    self.last = {}  # the newest logged step's metrics, as floats
    self.collapse_below, self.low = collapse_below, 0

  def add(self, step: int, metrics) -> None:
    self._pending.append((step, metrics))

  def flush(self) -> None:
    if not self._pending:
      return
    fetched, self._pending = jax.device_get(self._pending), []
    for step, metrics in fetched:
      loss = metrics['loss'][0]
      if not np.isfinite(loss):
        raise NonFiniteLossError(
            f'loss became {loss} at step {step}; stopping. '
            f'{_kept(self._ckpt)} Lower training.base_learning_rate or check '
            'the data.'
        )
    step, newest = fetched[-1]
    self.last = {
        k: float(v[0])
        if k in self.SCHEDULED
        else float(np.mean([m[k][0] for _, m in fetched], dtype=np.float64))
        for k, v in newest.items()
    }
    self._writer.write(step, self.last)
    self._writer.console(step, self.last)
    low = self.last.get('collapse_std_projection', 1.0) < self.collapse_below
    self.low = self.low + 1 if low else 0


def train(config, workdir, *, source) -> dict:
  """Pre-trains (or resumes) in `workdir`; returns the summary.

  Returns:
    {'step', 'preempted', 'metrics' (last logged), 'state_sha256'}.

  Raises:
    validation.ConfigError: the checkpoint was trained under another
      trajectory (resume.check_resume); nothing is written.
    NonFiniteLossError, CollapseError: see their docstrings.
  """
  resume.check_built(config)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  t, d = config.training, config.derived
  # Asynchronous saves: a scheduled checkpoint stalls the loop for the
  # device-to-host copy only; ckpt.close() below waits for the writes.
  ckpt = _checkpointer(config, workdir, async_save=True)
  trajectory_changes = resume.check_resume(config, ckpt)
  trajectory = resume.trajectory(config)
  method, optimizer, update = experiment.make_update(config)
  restored = ckpt.restore_latest(experiment.state_template(config))
  resume.write_config(
      config,
      workdir,
      start_step=0 if restored is None else int(restored.step),
      trajectory_changes=trajectory_changes,
  )
  # Wall time summed over every segment of a resumed run.
  wall_base = (
      0.0
      if restored is None
      else float((restored.extra or {}).get('wall_time_s', 0.0))
  )
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
  writer = writers.MetricWriter(
      workdir,
      is_chief=jax.process_index() == 0,
      total_steps=d.total_steps,
      images_per_step=t.global_batch_size,
  )
  writer.truncate_after(step)
  logging.info(
      'Process %d of %d reads its own data shard: %d of the %d '
      'images of each step, %d per local device.',
      jax.process_index(),
      jax.process_count(),
      t.global_batch_size // jax.process_count(),
      t.global_batch_size,
      t.global_batch_size // jax.device_count(),
  )
  data = pipeline.prefetch_to_device(
      pipeline.make_pretrain_iterator(
          source,
          split=config.data.pretrain_split,
          global_batch_size=t.global_batch_size,
          image_size=config.data.image_size,
          seed=config.seed,
          start_step=step,
          min_crop_area=config.data.min_crop_area,
          in_memory_on=config.data.in_memory_on,
      )
  )
  rstate = parallel.replicate(state)
  del state
  p_update = experiment.pmap_update(update)
  if step < stop_at:
    # Compiled before the loop, then a barrier: every process enters the
    # first step's collectives together (see hosts.barrier).
    first_batch = next(data)
    hosts.compile_then_sync(
        p_update, rstate, first_batch, name='the training step'
    )
    data = itertools.chain([first_batch], data)
  metrics = _MetricsBuffer(writer, ckpt, config.logging.collapse_stop_below)
  collapsed = lambda: metrics.low >= config.logging.collapse_stop_after
  preempted, agreements = False, 0  # agreements: all-gathers (logged, tested)

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
        rstate, step_metrics = p_update(rstate, next(data))
        step += 1
        metrics.add(step, step_metrics)
        sync = step % config.logging.every_steps == 0 or step == stop_at
        if sync:
          metrics.flush()
        if (
            config.logging.knn_every_steps
            and step % config.logging.knn_every_steps == 0
        ):
          metrics.flush()
          online = parallel.unreplicate(rstate)  # frozen, in eval mode
          writer.write(
              step,
              {
                  'knn_top1': features.knn_eval(
                      config, source, online.online_params, online.online_state
                  )
              },
          )
        decision = preemption.decide(watcher, ckpt, sync)
        agreements += decision.collectives
        if (
            decision.preempt
            or step == stop_at
            or collapsed()
            or ckpt.should_save(step, time_due=decision.time_due)
        ):
          metrics.flush()  # Never checkpoint a state whose loss is not finite.
          _save(
              ckpt,
              step,
              rstate,
              {'wall_time_s': wall_time(), 'trajectory': trajectory},
          )
        if decision.preempt:
          ckpt.wait()  # The process is about to exit: commit first.
          logging.warning(
              '%s received at step %d: checkpoint saved in %s; '
              'rerun the same command to resume.',
              watcher.signal_name or 'A preemption signal (on ' 'another host)',
              step,
              ckpt.directory,
          )
          preempted = True
          break
        if collapsed() and step < stop_at:  # every process: _MetricsBuffer
          ckpt.wait()  # commit the checkpoint before stopping
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
    # Commits a save still being written (the final one, or the last good
    # one when the run stops on a non-finite loss) before returning.
    ckpt.close()
  writer.close()
  logging.info(
      'Process %d: %d cross-process agreements in %d steps.',
      jax.process_index(),
      agreements,
      step - start_step,
  )
  fingerprint = _check_same_state(parallel.unreplicate(rstate), step, 'final')
  done_path = workdir_lib.pretrain_done_path(workdir)
  # Written when the run is complete (not when max_steps stopped it early);
  # a rerun of a finished run trains nothing and leaves the record alone.
  if (
      jax.process_index() == 0
      and not preempted
      and step >= d.total_steps
      and (step > start_step or not done_path.exists())
  ):
    done_path.write_text(
        json.dumps(
            {
                'step': step,
                'total_steps': d.total_steps,
                'metrics': metrics.last,
                'wall_time_s': wall_time(),
                'state_sha256': fingerprint,
            }
        )
    )
  return {
      'step': step,
      'preempted': preempted,
      'metrics': metrics.last,
      'state_sha256': fingerprint,
  }


def _save(
    ckpt: checkpointing.Checkpointer, step: int, rstate, extra: dict
) -> None:
  """Checkpoints the replicated state (async); a non-finite one stops."""
  try:
    ckpt.save(
        step, jax.device_get(parallel.unreplicate(rstate)), extra, force=True
    )
  except checkpointing.NonFiniteStateError as e:
    # The weights went non-finite in this step's update; its loss (computed
    # before the update) was still finite.
    raise NonFiniteLossError(
        f'the training state became non-finite at step {step}; stopping '
        f'without saving it. {_kept(ckpt)} ({e})'
    ) from e


def _kept(ckpt) -> str:
  latest = ckpt.latest_step()
  if latest is None:
    return f'No checkpoint was saved yet in {ckpt.directory}.'
  return (
      f'The last good checkpoint (step {latest}) in {ckpt.directory} is '
      'kept.'
  )


def _check_same_state(state, step: int, which: str) -> str:
  """Logs the state's fingerprint; raises unless every process has it."""
  fingerprint = hosts.fingerprint(state)
  logging.info(
      'Process %d: %s state (step %d) sha256 %s',
      jax.process_index(),
      which,
      step,
      fingerprint,
  )
  hint = (
      'every process must start from the same checkpoint: use one '
      'workdir that all hosts share (gs:// on TPU pods)'
      if which == 'starting'
      else 'the processes diverged while training '
      '(a host-dependent computation outside the pmapped step?)'
  )
  hosts.check_same_on_all_processes(
      hosts.fingerprint_words(fingerprint),
      f'the {which} training state at step {step} (sha256 prefixes as int32 '
      f'words); {hint}',
  )
  return fingerprint


def load_latest_state(config, workdir) -> Optional[experiment.TrainState]:
  """The workdir's latest checkpointed TrainState (host NumPy), or None."""
  ckpt = checkpointing.Checkpointer(workdir_lib.checkpoint_dir(workdir))
  restored = ckpt.restore_latest(experiment.state_template(config))
  ckpt.close()
  return None if restored is None else restored.state
