"""Two processes on one machine, as on a 2-host pod: jax.distributed + gloo.

The multi-process runs are `python -m byol_jax.main` in fresh processes on
127.0.0.1, each process with 4 fake CPU devices (XLA_FLAGS), jax.distributed
started from the --coordinator_address/--num_processes/--process_id flags and
cross-process collectives over gloo. The reference is the same config run in
this (pytest) process on its 8 CPU devices, on the same global batches
(two_host_batches: host 0's batch on devices 0-3, host 1's on devices 4-7,
pmap's global device order).

Exactness, compared like with like.
  * Resume: a two-process run stopped at step k and resumed ends bit for bit
    equal to an uninterrupted two-process run (same layout, so the same
    summation orders: sha256 state fingerprints equal), and its step-k
    checkpoint equals the uninterrupted run's step k.
  * Layout: the two-process run against the one-process, 8-device reference
    is equal to a tolerance, not bit for bit, for two measured reasons on
    XLA:CPU: the cross-process all-reduce (gloo) sums the 8 devices in
    another order than the in-process one (a psum of 8 float32 normals: 584
    of 1000 sums differ, by up to 9.5e-7); XLA:CPU's convolution-gradient
    kernels round differently with 1, 4 or 8 devices per process (~80% of a
    432-value weight gradient differ in the last bits). Training turns some
    of these last-bit differences into jumps of 1,000x within a few steps
    (on the digits even at step 1; measured beside LAYOUT_TOLERANCE), so the
    runs read uniform noise images and the comparison is made early, at
    LAYOUT_STEP, with a tolerance measured over seeds.

Runs (once, in test_two_processes_like_two_hosts; the two-process runs go in
the background while this process computes the reference). BN with
cross-replica statistics, the variant with the most cross-device traffic
(its batch statistics are all-reduced in every forward pass, besides the
gradients); GN+WS shares every other multi-host path with it:
  bn2  2 processes, 12 steps, logging (and so agreeing across processes)
       every 2nd step, the checkpoint clock on; once step 2 is logged,
       process 1 alone gets SIGTERM (a preemption notice reaching one host):
       both processes must checkpoint the same step k and exit cleanly
  bn2s 2 processes, 12 steps uninterrupted, a checkpoint every step (beside
       bn2)
  bn1  this process with 8 devices, LAYOUT_STEP steps (a checkpoint every
       step)
then
  bn2r a copy of bn2's workdir resumed by 2 new processes, from k to 12.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
import xla_env  # tests/xla_env.py

from byol_jax import experiment
from byol_jax import main as main_lib
from byol_jax.config import configs
from byol_jax.config import plan
from byol_jax.data import pipeline
from byol_jax.data import sources
from byol_jax.hosts import sync
from byol_jax.training import checkpointing

REPO = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT_S = 900
HOSTS, DEVICES_PER_PROCESS = 2, 4
STEPS = 12
BATCH = 16  # 2 per device on 8 devices.
SYNC_EVERY = 2  # The two-process runs log, and agree, every 2nd step.
# The two-process vs one-process comparison (module docstring): at step
# LAYOUT_STEP, |two - one| <= LAYOUT_TOLERANCE x the largest value of each
# part of the state (_excess). Measured on a 2-core AMD EPYC (jax 0.10.2),
# in units of 1e-6 x that largest value, bn2s against bn1 at every step
# (`BYOL_MEASURE_LAYOUT=1 python -m pytest -s tests/hosts/test_multihost.py -k
# spread`):
#   * on the digits, differences jump by 1,000x in one step, not by rounding
#     growth: seed 1 at step 1 (momentum 1,408, i.e. first gradients apart
#     by 1.4e-3 while the BN statistics of the forward pass agree to 0.035),
#     seed 0 at step 4 (475). The flat digit backgrounds put activations at
#     near-ties where a last-bit difference routes a gradient differently.
#   * on uniform noise images (synthetic:16), seeds 0-4: at most 0.70 at
#     step 1 and 0.34 at step 2 (every part), 0.70 through step 5; jumps
#     came later in 2 of 5 seeds (seed 0 at step 6: 774, seed 1 at step 8:
#     25), the other 3 stay below 0.35 through step 12;
#   * one training step moves the parameters by 45,000-54,000 (step 1 -> 2).
# So the runs read noise images and compare at step 2 with a tolerance of
# 10 (1e-5): 29x the largest difference measured there, 4,500x below what a
# step moves.
LAYOUT_STEP = 2
LAYOUT_TOLERANCE = 1e-5
EVERY_STEP = (
    '--config.checkpoint.every_steps=1',
    f'--config.checkpoint.max_to_keep={STEPS}',
)
CONFIG = 'byol_bn'
# Uniform noise images, not the digits: see LAYOUT_TOLERANCE.
ARG = f'tiny,dataset=synthetic:16,steps={STEPS},batch={BATCH}'
OVERRIDES = {
    'training.warmup_steps': 1,
    'eval.after_pretraining': False,
    'logging.knn_every_steps': 0,
    'logging.every_steps': 1,
    'checkpoint.every_steps': 1000,  # Only the final or preempted step.
    'checkpoint.every_secs': 0,
}
_FINAL = re.compile(r'Process (\d+): final state \(step (\d+)\) sha256 (\w+)')
_START = re.compile(
    r'Process (\d+): starting state \(step (\d+)\) sha256 (\w+)'
)


def two_host_batches(make_iterator, **kwargs):
  """The global batches of a 2-host x 4-device run, stacked by device.

  Args:
    make_iterator: pipeline.make_pretrain_iterator (or a function like it).
    **kwargs: its arguments, without process_index / process_count /
      local_device_count.

  Yields:
    Dicts of [8, per_device, ...] numpy arrays: host 0's batch, then host
    1's (pmap's global device order: process 0's devices come first).
  """
  hosts = [
      make_iterator(
          **kwargs,
          process_index=p,
          process_count=HOSTS,
          local_device_count=DEVICES_PER_PROCESS,
      )
      for p in range(HOSTS)
  ]
  for parts in zip(*hosts):
    yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = xla_env.subprocess_env(
      devices, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu'
  )
  # The subprocesses must import this checkout's byol_jax.
  env['PYTHONPATH'] = os.pathsep.join(
      [str(REPO)]
      + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
  )
  return env


class Job:
  """The processes of one multi-process run of main, logging to files."""

  def __init__(
      self,
      name,
      workdir,
      config,
      *,
      processes=2,
      extra=(),
      cwds=None,
      logdir=None,
  ):
    self.name, self.workdir = name, pathlib.Path(workdir)
    port = _free_port()
    self.procs, self.logs = [], []
    for i in range(processes):
      cmd = [
          sys.executable,
          '-m',
          'byol_jax.main',
          f'--config={config}',
          f'--workdir={workdir}',
          f'--coordinator_address=127.0.0.1:{port}',
          f'--num_processes={processes}',
          f'--process_id={i}',
          *(f'--config.{k}={v}' for k, v in OVERRIDES.items()),
          *extra,
      ]
      log = (logdir or self.workdir.parent) / f'{name}.process{i}.log'
      self.logs.append(log)
      with log.open('w') as f:
        self.procs.append(
            subprocess.Popen(
                cmd,
                cwd=cwds[i] if cwds else REPO,
                env=_env(DEVICES_PER_PROCESS),
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        )

  def wait(self, deadline, expect_failure=False) -> dict:
    """Waits for every process; on a failure kills the rest and fails.

    With expect_failure, waits for all to exit and returns their logs and
    return codes instead.
    """
    while any(p.poll() is None for p in self.procs):
      if not expect_failure and any(
          p.poll() not in (None, 0) for p in self.procs
      ):
        break
      if time.time() > deadline:
        break
      time.sleep(0.5)
    if expect_failure and all(p.poll() is not None for p in self.procs):
      return {
          'returncodes': [p.returncode for p in self.procs],
          'logs': [log.read_text() for log in self.logs],
      }
    if not expect_failure and all(p.poll() == 0 for p in self.procs):
      return {
          'workdir': self.workdir,
          'pids': [p.pid for p in self.procs],
          'logs': [log.read_text() for log in self.logs],
      }
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    tails = '\n'.join(
        f'--- {log.name} (rc {p.returncode}):\n' + log.read_text()[-3000:]
        for p, log in zip(self.procs, self.logs)
    )
    pytest.fail(f'run {self.name} failed or timed out:\n{tails}')


def _config(name, arg='tiny'):
  return configs.load_experiment(name, arg)


def _reference(name, arg, workdir, **overrides):
  """The one-process run (8 devices) on the two hosts' global batches."""
  config = _config(name, arg)
  with config.unlocked():
    for key, value in {**OVERRIDES, **overrides}.items():
      *section, field = key.split('.')
      (config[section[0]] if section else config)[field] = value
  original = pipeline.make_pretrain_iterator
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(
        pipeline,
        'make_pretrain_iterator',
        lambda source, **kw: two_host_batches(original, source=source, **kw),
    )
    return main_lib.run(config, str(workdir))


def _two_process_job(name, workdir, *extra, **kwargs):
  """bn2's command; bn2s, bn2r and the unshared run repeat it (same config)."""
  return Job(
      name,
      workdir,
      f'{kwargs.pop("experiments", "experiments")}/{CONFIG}.py:{ARG}',
      extra=(
          f'--config.logging.every_steps={SYNC_EVERY}',
          '--config.checkpoint.every_secs=600',
          *extra,
      ),
      **kwargs,
  )


def _run_all(root):
  """The runs of the module docstring; {name: their workdir, pids, logs}."""
  assert jax.local_device_count() == 8  # conftest.py
  root.mkdir(parents=True)
  deadline = time.time() + TIMEOUT_S
  jobs = {
      'bn2': _two_process_job('bn2', root / 'bn2'),
      'bn2s': _two_process_job('bn2s', root / 'bn2s', *EVERY_STEP),
  }
  signaller = threading.Thread(
      target=_sigterm_process_1_after_first_log,
      args=(jobs['bn2'], deadline),
      daemon=True,
  )
  signaller.start()
  _reference(
      CONFIG,
      ARG,
      root / 'bn1',
      **{
          'training.max_steps': LAYOUT_STEP,
          'checkpoint.every_steps': 1,
          'checkpoint.max_to_keep': LAYOUT_STEP,
      },
  )
  out = {'bn1': {'workdir': root / 'bn1'}}
  out.update((name, job.wait(deadline)) for name, job in jobs.items())
  signaller.join()
  # The second two-process run resumes a copy of bn2 (bn2 itself keeps its
  # step-k checkpoint for the comparison with bn2s's).
  shutil.copytree(root / 'bn2', root / 'bn2r')
  out['bn2r'] = _two_process_job('bn2r', root / 'bn2r').wait(deadline)
  return out


def _sigterm_process_1_after_first_log(job, deadline):
  """SIGTERM to process 1 only, once process 0 has logged (step 2)."""
  metrics = job.workdir / 'metrics.jsonl'
  while time.time() < deadline and job.procs[1].poll() is None:
    if metrics.exists() and metrics.read_text().strip():
      job.procs[1].send_signal(signal.SIGTERM)
      return
    time.sleep(0.05)


def _fingerprints(logs, pattern=_FINAL):
  """{process: (step, sha256)} from each process's log."""
  found = {}
  for log in logs:
    for m in pattern.finditer(log):
      found[int(m.group(1))] = (int(m.group(2)), m.group(3))
  return found


def _restore(workdir, step, config_name, tmp_path):
  """The TrainState of checkpoint `step` of a run (host NumPy)."""
  only = tmp_path / f'{workdir.name}-{step}'
  shutil.copytree(workdir / 'checkpoints' / str(step), only / str(step))
  run = plan.build(_config(config_name, ARG))
  restored = checkpointing.Checkpointer(only).restore_latest(
      experiment.state_template(run.config, run.data.num_classes)
  )
  assert restored.step == step
  return restored.state


def _excess(two, one, parts=None) -> float:
  """max |two - one| / tolerance over all leaves; <= 1 means close.

  The tolerance of a leaf is LAYOUT_TOLERANCE x the largest value in its
  part of the TrainState (online/target params, BN state, optimizer state),
  not of the leaf itself: a bias followed by BatchNorm gets a gradient that is 0
  up to
  rounding, so its values (and momentum) are round-off noise, ~1e-11, and
  differ between any two summation orders.
  """
  worst = 0.0
  assert two._fields == one._fields
  for part in parts or one._fields:
    a, b = getattr(two, part), getattr(one, part)
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b), part
    if not leaves_b:
      continue
    scale = max(
        float(np.max(np.abs(np.asarray(y, np.float64)), initial=0.0))
        for y in leaves_b
    )
    for x, y in zip(leaves_a, leaves_b):
      x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
      assert x.shape == y.shape, part
      diff = float(np.max(np.abs(x - y), initial=0.0))
      worst = max(
          worst, diff / (LAYOUT_TOLERANCE * scale) if scale else diff * np.inf
      )
  return worst


def _stopped_at(runs):
  """The step at which bn2's processes checkpointed and stopped."""
  return _fingerprints(runs['bn2']['logs'])[0][0]


def test_two_processes_like_two_hosts(tmp_path):
  """All the checks on the runs, in one test.

  One test function, so that the runs happen once even when pytest-xdist
  spreads a module's tests over several workers (each would redo a fixture).
  """
  runs = _run_all(tmp_path / 'runs')
  _check_equal_to_one_process(runs, tmp_path / 'layout')
  _check_signal_to_one_process_stops_both(runs)
  _check_resume_in_a_second_two_process_run(runs, tmp_path / 'resume')
  _check_only_process_zero_writes_logs(runs)
  _check_unshared_workdir_refused(runs, tmp_path / 'unshared')
  _check_no_per_step_agreement(runs)


def _check_no_per_step_agreement(runs):
  """One cross-process all-gather per logging step, none in between."""
  k = _stopped_at(runs)
  for name, steps in (('bn2', k), ('bn2r', STEPS - k)):
    for log in runs[name]['logs']:
      assert re.search(
          rf'Process \d: {steps // SYNC_EVERY} cross-process '
          rf'agreements in {steps} steps',
          log,
      ), name


def _check_equal_to_one_process(runs, tmp_path):
  final = _fingerprints(runs['bn2s']['logs'])
  # Both processes end with the same state, bit for bit ...
  assert set(final) == {0, 1} and final[0] == final[1] and final[0][0] == STEPS
  # ... which is the checkpoint process 0 wrote.
  assert (
      sync.fingerprint(
          _restore(runs['bn2s']['workdir'], STEPS, CONFIG, tmp_path)
      )
      == final[0][1]
  )
  # Training moved the parameters (the comparisons are not of two inits).
  start = _fingerprints(runs['bn2s']['logs'], _START)
  assert start[0] == start[1] and start[0][1] != final[0][1]
  # At LAYOUT_STEP the two-process state equals the one-process, 8-device
  # run on the same data, to the measured tolerance ...
  two = _restore(runs['bn2s']['workdir'], LAYOUT_STEP, CONFIG, tmp_path)
  one = _restore(runs['bn1']['workdir'], LAYOUT_STEP, CONFIG, tmp_path)
  assert _excess(two, one) <= 1.0
  # ... which tells training steps apart: one step moves the parameters by
  # far more (measured: 4,500-5,400 tolerances; LAYOUT_TOLERANCE).
  before = _restore(runs['bn1']['workdir'], LAYOUT_STEP - 1, CONFIG, tmp_path)
  assert _excess(before, one, parts=['online_params', 'target_params']) > 1e3


def _check_signal_to_one_process_stops_both(runs):
  logs, workdir = runs['bn2']['logs'], runs['bn2']['workdir']
  k = _stopped_at(runs)
  # Agreed at a logging step after the signal.
  assert SYNC_EVERY <= k < STEPS and k % SYNC_EVERY == 0
  assert f'SIGTERM received at step {k}: checkpoint saved' in logs[1]
  assert (
      'A preemption signal (on another host) received at step '
      f'{k}: checkpoint saved'
  ) in logs[0]
  assert checkpointing.Checkpointer(workdir / 'checkpoints').latest_step() == k
  assert not (workdir / 'pretrain_done.json').exists()  # not finished


def _check_resume_in_a_second_two_process_run(runs, tmp_path):
  logs = runs['bn2r']['logs']
  k = _stopped_at(runs)
  start = _fingerprints(logs, _START)
  stopped = _fingerprints(runs['bn2']['logs'])
  # Both processes resumed from the step-k checkpoint, to the same state.
  assert start == {0: stopped[0], 1: stopped[0]}
  assert all(f'at step {k}.' in log and 'Resumed from' in log for log in logs)
  # Stopped at k and resumed is bit for bit the uninterrupted run of the
  # same layout, at k and at the end.
  straight = _restore(runs['bn2s']['workdir'], k, CONFIG, tmp_path)
  assert sync.fingerprint(straight) == stopped[0][1]
  final = _fingerprints(logs)
  assert final[0] == final[1] == _fingerprints(runs['bn2s']['logs'])[0]
  resumed = _restore(runs['bn2r']['workdir'], STEPS, CONFIG, tmp_path)
  assert sync.fingerprint(resumed) == final[0][1]


def _check_only_process_zero_writes_logs(runs):
  k = _stopped_at(runs)
  for name, last in (('bn2', k), ('bn2r', STEPS)):
    steps = list(range(SYNC_EVERY, last + 1, SYNC_EVERY))
    workdir, pids, logs = (
        runs[name][key] for key in ('workdir', 'pids', 'logs')
    )
    rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').open()]
    # One row per step: a second writer would have appended duplicates.
    assert [r['step'] for r in rows] == steps, name
    events = sorted(p.name for p in workdir.glob('events.out.tfevents.*'))
    # TensorBoard files end in .<pid>.<n>.v2: all from a process 0.
    writers = {int(e.split('.')[-3]) for e in events}
    chiefs = {pids[0]} | ({runs['bn2']['pids'][0]} if name == 'bn2r' else set())
    assert events and writers <= chiefs, (name, events, pids)
    if name != 'bn2':  # bn2 was preempted: no pretrain_done.json.
      done = json.loads((workdir / 'pretrain_done.json').read_text())
      assert done['step'] == steps[-1]
      assert done['state_sha256'] == _fingerprints(logs)[0][1]
    assert (
        json.loads((workdir / 'config.json').read_text())['training'][
            'global_batch_size'
        ]
        == BATCH
    )
    # The console progress line is process 0's alone.
    last = f'step {steps[-1]}/'
    assert last in logs[0] and last not in logs[1]
    assert 'Process 1 of 2, 4 local device(s) of 8' in logs[1]


def _check_unshared_workdir_refused(runs, tmp_path):
  """A workdir on each host's local disk: process 0 finds a checkpoint there,
  process 1 finds none. Both must stop, not train from different states."""
  disks = [tmp_path / 'host0', tmp_path / 'host1']
  shutil.copytree(runs['bn2']['workdir'], disks[0] / 'run')
  disks[1].mkdir(parents=True)
  job = _two_process_job(
      'unshared',
      'run',
      experiments=REPO / 'experiments',
      cwds=disks,
      logdir=tmp_path,
  )
  out = job.wait(time.time() + 300, expect_failure=True)
  assert out['returncodes'] == [2, 2]
  for log, disk in zip(out['logs'], disks):
    assert 'Traceback' not in log
    # The relative workdir is reported resolved against each host's cwd.
    assert (
        'Checkpoint error: processes see different checkpoints in '
        f'{disk.resolve()}/run/checkpoints'
    ) in log
    assert f'[{_stopped_at(runs)}, -1]' in log
    assert 'must share one workdir' in log
    assert 'Compiled the training step' not in log  # stopped before training
  assert not (disks[1] / 'run' / 'checkpoints').exists()


def test_global_batch_must_split_over_all_devices_of_all_hosts():
  config = _config('gn_ws')
  config.training.global_batch_size = 20
  with pytest.raises(
      plan.ConfigError,
      match=r'training.global_batch_size=20: must be a positive '
      r'multiple of the 8 devices \(2 host\(s\) x 4 '
      r'device\(s\)\), e.g. '
      r'--config.training.global_batch_size=16',
  ):
    plan.build(config, topology=plan.Topology(2, 4), read_data=False)


def test_host_shards_are_disjoint_and_make_the_global_batch():
  """The two hosts' streams of the runs above (digits, labels -> indices)."""
  digits = sources.get_source('digits')
  split = digits.resolve_split('pretrain')
  n = digits.num_examples(split)
  ids = sources.InMemorySource(
      'ids',
      n,
      {split: digits.images[split]},
      {split: np.arange(n, dtype=np.int32)},
  )
  kwargs = dict(
      source=ids,
      split='pretrain',
      global_batch_size=BATCH,
      image_size=16,
      seed=0,
  )
  host_batch = BATCH // HOSTS
  steps = n // BATCH  # About one epoch of each host's shard.
  hosts = [
      pipeline.make_pretrain_iterator(
          **kwargs, process_index=p, process_count=2, local_device_count=4
      )
      for p in range(2)
  ]
  # What the reference feeds its 8 devices: host 0's batch, then host 1's.
  merged = two_host_batches(pipeline.make_pretrain_iterator, **kwargs)
  seen = [[], []]
  for _, a, b, both in zip(range(steps), *hosts, merged):
    a, b = ({k: np.asarray(v) for k, v in x.items()} for x in (a, b))
    assert a['label'].shape == b['label'].shape == (4, host_batch // 4)
    assert not set(a['label'].ravel()) & set(b['label'].ravel())
    for key in ('view1', 'view2', 'label'):
      np.testing.assert_array_equal(both[key], np.concatenate([a[key], b[key]]))
    seen[0] += list(a['label'].ravel())
    seen[1] += list(b['label'].ravel())
  # Within an epoch a host never repeats an example, and the hosts' shards
  # never overlap.
  assert len(set(seen[0])) == len(seen[0]) == steps * host_batch
  assert len(set(seen[1])) == len(seen[1]) == steps * host_batch
  assert not set(seen[0]) & set(seen[1])


def test_half_specified_distributed_flags_exit_with_one_line(tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'byol_jax.main',
          '--config=experiments/gn_ws.py:tiny',
          f'--workdir={tmp_path}',
          '--coordinator_address=127.0.0.1:1234',
      ],
      cwd=REPO,
      env=_env(1),
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith(
      'Distributed setup error: --coordinator_address '
      'set but --num_processes, --process_id not'
  )


@pytest.mark.skipif(
    not os.environ.get('BYOL_MEASURE_LAYOUT'),
    reason='a measurement (LAYOUT_TOLERANCE), not a check: '
    'set BYOL_MEASURE_LAYOUT=1 (seeds: BYOL_SEEDS=0,1,...)',
)
@pytest.mark.parametrize(
    'seed',
    [int(s) for s in os.environ.get('BYOL_SEEDS', '0,1,2,3,4').split(',')],
)
def test_layout_spread(tmp_path, seed):
  """Prints _excess(two-process, one-process) per part at every step."""
  job = _two_process_job(
      'two', tmp_path / 'two', *EVERY_STEP, f'--config.seed={seed}'
  )
  _reference(
      CONFIG,
      ARG,
      tmp_path / 'one',
      seed=seed,
      **{'checkpoint.every_steps': 1, 'checkpoint.max_to_keep': STEPS},
  )
  job.wait(time.time() + TIMEOUT_S)
  states = {
      (run, step): _restore(tmp_path / run, step, CONFIG, tmp_path)
      for run in ('two', 'one')
      for step in range(1, STEPS + 1)
  }
  for step in range(1, STEPS + 1):
    two, one = states['two', step], states['one', step]
    row = {
        p: round(_excess(two, one, parts=[p]), 3)
        for p in one._fields
        if p not in ('step', 'rng')
    }
    if step > 1:
      row['step_moves'] = round(
          _excess(
              states['one', step - 1],
              one,
              parts=['online_params', 'target_params'],
          ),
          1,
      )
    print(json.dumps({'seed': seed, 'step': step, **row}))
