r"""The GPU device suite: one time-boxed command, results as it goes.

    python -m benchmarks.device_suite --out=$OUT \
        --data_dir=.gpu_data/cifar10-jpg.tar.gz
    python -m benchmarks.device_suite --smoke --out=/tmp/suite   # CPU, tiny

Sections, in this order, each in its own child process (its compile time
and device memory its own; the parent never initialises an accelerator):

  1. environment: devices (name, count, memory), jax / jaxlib / CUDA
     plugin versions, the backend's platform version, XLA_FLAGS and the
     other JAX_* / XLA_* / CUDA_* / NVIDIA_* variables, nvidia-smi, torch;
  2. jax_step: ResNet-50 at 224 px, bfloat16, the BYOL step of
     benchmarks/throughput.py (`throughput.run_row`: images/s, MFU, peak
     device memory, compile time), BN and GN+WS at per-device batch 128
     and 256, one row per child;
  3. input_pipeline: the in-memory input path alone (benchmarks/
     input_pipeline.py --skip_streaming: gather, random-resized crops,
     both views' BYOL colour augmentation; the step excluded) on the
     device: CIFAR-10 at 32 px (from --data_dir; none without it) and
     synthetic 224 px images; images/s with and without the augmentation,
     compile time, and the 32 px row against the >= 50,000 images/s target
     (one H100/H200); the child's results file, named after the device, is
     copied to --results_dir;
  4. torch_step: the same step in PyTorch (benchmarks/torch_reference.py,
     BN, same batches), eager and torch.compile; "torch not installed"
     where torch is absent;
  5. cifar: CIFAR-10 ResNet-18 at 32 px BYOL (`--variant`, default gn_ws)
     on the in-memory path, through the project's own pieces: the config of
     experiments/<variant>.py:cifar10,dataset=folder:<data> (variants.
     variant_config), plan.build, pretrain.train, then linear_eval.
     run_linear_eval (kNN top-1 and a linear probe on frozen centre-crop
     features); images/s, steps done, kNN top-1, linear top-1.

Budget: `--budget_minutes` (default 9; 10 minutes is the device tool's
limit for one command, so one minute is left for installing wheels and
unpacking data). `make_plan` gives each item an estimated time, keeps
items by priority while they fit in the budget less a margin, and runs
them in section order; each item's time box is what is left less the
estimates of the items after it, so an item that finishes early leaves its
time to later ones and CIFAR training gets the rest. A child that runs
past its box is killed and recorded as timed out; a failing child records
its error; the suite always goes on. CIFAR steps are planned from the time
left and an assumed rate (`--cifar_rate`), and a timer inside the child
stops training (SIGTERM: the loop checkpoints and returns) when the time
for evaluation is reached.

After every item `--out` holds device_suite.json and device_suite.md (and
device_suite.log, every child's output), so a run killed from outside
still leaves what it measured. `--results_dir=DIR` also writes
DIR/device_suite-<device>-<date>.json and .md (benchmarks/results naming).

`--smoke`: the same plan at tiny sizes on the CPU (ResNet-10 at width 1/4,
16 px, scikit-learn's digits unless --data_dir names CIFAR-10), a few
steps, one batch size, inside a 4-minute budget by default; nearly all of
it is XLA compiling the tiny step once per row (15-50 s of CPU each on a
2-core machine).
"""

import dataclasses
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Optional

from absl import flags

from benchmarks import _cli
from benchmarks import _results
from benchmarks import throughput
from benchmarks import torch_reference

SECTIONS = ('environment', 'jax_step', 'input_pipeline', 'torch_step', 'cifar')
SECTION_TITLES = {
    'environment': 'Environment',
    'jax_step': 'BYOL step, JAX (benchmarks/throughput.py)',
    'input_pipeline': 'Input pipeline, in memory on the device '
    '(benchmarks/input_pipeline.py)',
    'torch_step': (
        'BYOL step, PyTorch reference (benchmarks/torch_reference.py)'
    ),
    'cifar': 'CIFAR-10 BYOL, in memory, then kNN and linear probe',
}
VARIANTS = {'gn_ws': ('gn_ws', 'gn_ws'), 'bn': ('bn', 'byol_bn')}
# Seconds left unplanned at the end of the budget: writing results, killing
# a child, the parent's own start. At least MIN_MARGIN_S, or this fraction.
MIN_MARGIN_S = 15.0
MARGIN_FRACTION = 0.04
DEFAULT_BUDGET_MINUTES = 9.0
DEFAULT_SMOKE_BUDGET_MINUTES = 4.0
# Estimated seconds per item. GPU: one H200; the jax rows from the
# 2026-11-30 throughput run (compile 33-40 s, plus the child's start, the
# CPU-backend FLOP count and the timed steps), torch.compile of ResNet-50 a
# guess (not yet measured here). Smoke: the 2-core CPU, with room for a
# machine loaded by other work (XLA compiles the tiny step in 10-20 s
# unloaded, over a minute at load 8). cifar:
# the least time the section is started with (data, compile, a few steps,
# evaluation); it gets everything left. input: the child's start, unpacking
# and decoding CIFAR-10's 60,000 JPEGs (into the cache the cifar item then
# reads), two small compiles (32 and 224 px) and the timed batches (a
# guess on the GPU, not yet measured; smoke: 24 s measured for the
# synthetic row alone at load 10 on 2 cores).
ESTIMATES = {
    'gpu': dict(
        environment=20.0,
        jax_row=60.0,
        input=45.0,
        torch_row=70.0,
        cifar=110.0,
        cifar_eval=50.0,
        cifar_compile=30.0,
    ),
    'smoke': dict(
        environment=15.0,
        jax_row=40.0,
        input=30.0,
        torch_row=40.0,
        cifar=60.0,
        cifar_eval=30.0,
        cifar_compile=15.0,
    ),
}
# Which items survive a small budget: lower first.
PRIORITY = {
    ('environment', None): 0,
    ('jax_step', 'bn', 0): 1,
    ('jax_step', 'gn_ws', 0): 2,
    ('input_pipeline', None): 3,
    ('torch_step', 'bn', 0): 4,
    ('cifar', None): 5,
    ('jax_step', 'bn', 1): 6,
    ('jax_step', 'gn_ws', 1): 7,
    ('torch_step', 'bn', 1): 8,
}
GPU_BATCHES = (128, 256)
SMOKE_BATCHES = (8,)  # one batch size: each row is an XLA compile
# ResNet-50 224 px bf16 (GPU) or ResNet-10 x1/4 16 px float32 (smoke):
# throughput.py's own command line.
JAX_ARGS = {
    'gpu': [
        '--depth',
        '50',
        '--stem',
        'imagenet',
        '--image_size',
        '224',
        '--dtype',
        'bfloat16',
        '--num_devices',
        '1',
        '--steps',
        '10',
        '--warmup',
        '2',
    ],
    'smoke': [
        '--depth',
        '10',
        '--width',
        '0.25',
        '--image_size',
        '16',
        '--dtype',
        'float32',
        '--num_devices',
        '1',
        '--steps',
        '2',
        '--warmup',
        '1',
    ],
}
TORCH_ARGS = {
    'gpu': [
        '--depth',
        '50',
        '--image_size',
        '224',
        '--dtype',
        'bfloat16',
        '--steps',
        '10',
        '--warmup',
        '2',
    ],
    'smoke': [
        '--depth',
        '18',
        '--image_size',
        '32',
        '--dtype',
        'float32',
        '--hidden',
        '64',
        '--out_dim',
        '16',
        '--num_classes',
        '10',
        '--steps',
        '2',
        '--warmup',
        '1',
    ],
}
# benchmarks/input_pipeline.py's command line: the in-memory rows only
# (--cifar, --out and the caches are added per run). Smoke: the synthetic
# 224 px row at a tiny batch (CIFAR-10 only with --data_dir).
INPUT_ARGS = {
    'gpu': [
        '--skip_streaming',
        '--in_memory_batch=512',
        '--in_memory_batch_224=256',
        '--batches=20',
    ],
    'smoke': [
        '--skip_streaming',
        '--in_memory_batch=512',
        '--in_memory_batch_224=8',
        '--batches=3',
    ],
}
# The in-memory path's target at 32 px on one H100/H200 (images/s).
INPUT_TARGET_IMAGES_PER_SEC = 50_000
OUT_JSON, OUT_MD, OUT_LOG = (
    'device_suite.json',
    'device_suite.md',
    'device_suite.log',
)


@dataclasses.dataclass
class Item:
  """One unit of the plan: a child process with its own time box."""

  section: str
  name: str
  estimate_s: float
  priority: int
  spec: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Plan:
  """The items that fit the budget, in run order, and those left out."""

  budget_s: float
  margin_s: float
  items: list
  dropped: list

  @property
  def planned_s(self) -> float:
    return sum(i.estimate_s for i in self.items)


def margin_for(budget_s: float) -> float:
  """Seconds of the budget left unplanned (see MIN_MARGIN_S)."""
  return max(MIN_MARGIN_S, MARGIN_FRACTION * budget_s)


def make_plan(
    budget_s: float, *, smoke: bool = False, torch_missing: Optional[str] = None
) -> Plan:
  """Sizes the suite to a time budget.

  Args:
    budget_s: seconds the whole suite may take, compiles included.
    smoke: the tiny CPU plan (ESTIMATES['smoke']) instead of the GPU one.
    torch_missing: why torch cannot run (torch_reference.
      torch_missing_reason()), or None; then one item records it.

  Returns:
    A Plan whose items (in section order) have estimates summing to at most
    budget_s - margin_s; items are kept in PRIORITY order while they fit,
    the rest are in `dropped` (with the reason).

  Raises:
    ValueError: a budget too small for even the environment section.
  """
  kind = 'smoke' if smoke else 'gpu'
  est = ESTIMATES[kind]
  batches = SMOKE_BATCHES if smoke else GPU_BATCHES
  margin = margin_for(budget_s)
  candidates = [
      Item(
          'environment',
          'environment',
          est['environment'],
          PRIORITY[('environment', None)],
      )
  ]
  for norm in ('bn', 'gn_ws'):
    for i, batch in enumerate(batches):
      candidates.append(
          Item(
              'jax_step',
              f'jax {norm} batch {batch}',
              est['jax_row'],
              PRIORITY[('jax_step', norm, i)],
              dict(norm=norm, per_device_batch=batch),
          )
      )
  candidates.append(
      Item(
          'input_pipeline',
          'input pipeline',
          est['input'],
          PRIORITY[('input_pipeline', None)],
      )
  )
  if torch_missing:
    candidates.append(
        Item(
            'torch_step',
            'torch',
            0.0,
            PRIORITY[('torch_step', 'bn', 0)],
            dict(skipped=torch_missing),
        )
    )
  else:
    for i, batch in enumerate(batches):
      candidates.append(
          Item(
              'torch_step',
              f'torch bn batch {batch}',
              est['torch_row'],
              PRIORITY[('torch_step', 'bn', i)],
              dict(norm='bn', per_device_batch=batch),
          )
      )
  candidates.append(
      Item('cifar', 'cifar', est['cifar'], PRIORITY[('cifar', None)])
  )
  available = budget_s - margin
  if est['environment'] > available:
    raise ValueError(
        f'--budget_minutes={budget_s / 60:g}: too small; the environment '
        f'section alone needs {est["environment"]:.0f} s plus a margin of '
        f'{margin:.0f} s.'
    )
  kept, dropped, used = [], [], 0.0
  for item in sorted(candidates, key=lambda i: i.priority):
    if used + item.estimate_s <= available:
      kept.append(item)
      used += item.estimate_s
    else:
      dropped.append(
          dict(
              section=item.section,
              name=item.name,
              priority=item.priority,
              reason=f'not in the budget: needs about '
              f'{item.estimate_s:.0f} s, {available - used:.0f}'
              ' s were left',
          )
      )
  kept.sort(key=lambda i: (SECTIONS.index(i.section), candidates.index(i)))
  return Plan(budget_s, margin, kept, dropped)


# --------------------------------------------------------------------------
# Children.


def _run_child(argv, timeout_s: float, log_path, env=None) -> dict:
  """Runs argv (from the repository root) with a time box.

  Output goes to log_path (appended). The child is its own process group,
  so a child's children (throughput's FLOP-count child, torch's compile
  workers) go with it when it is killed.

  Returns:
    {'returncode': int or None, 'timed_out': bool, 'seconds': float,
    'tail': the log's last lines of this child}.
  """
  env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
  start = time.perf_counter()
  with open(log_path, 'a') as log:
    log.write(
        f'\n===== {time.strftime("%H:%M:%S")} '
        f'{" ".join(shlex.quote(a) for a in argv)} =====\n'
    )
    log.flush()
    offset = log.tell()
    proc = subprocess.Popen(
        argv,
        cwd=_results.REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,
    )
    timed_out = False
    try:
      proc.wait(timeout=max(1.0, timeout_s))
    except subprocess.TimeoutExpired:
      timed_out = True
    except BaseException:  # the suite itself interrupted: take it down too.
      _kill_group(proc)
      raise
    if timed_out:
      _kill_group(proc)
  with open(log_path) as log:
    log.seek(offset)
    tail = log.read()[-3000:].strip().splitlines()[-15:]
  return dict(
      returncode=None if timed_out else proc.returncode,
      timed_out=timed_out,
      seconds=time.perf_counter() - start,
      tail='\n'.join(tail),
  )


def _kill_group(proc) -> None:
  for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
    try:
      os.killpg(proc.pid, sig)
    except ProcessLookupError:
      return
    try:
      proc.wait(timeout=wait)
      return
    except subprocess.TimeoutExpired:
      continue


def _read_jsonl(path) -> list:
  try:
    lines = pathlib.Path(path).read_text().splitlines()
  except FileNotFoundError:
    return []
  out = []
  for line in lines:
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:  # a line cut by a kill
      pass
  return out


def _append(path, record: dict) -> None:
  with open(path, 'a') as f:
    f.write(json.dumps(record) + '\n')


def environment() -> dict:
  """What ran the suite: devices, versions, flags (run in a child).

  Returns:
    dict: platform, device_kind, device_count, devices (kind and
    memory bytes_limit of each), platform_version (the backend's: on GPU
    it names the CUDA version), jax / jaxlib / plugin versions, python,
    cpu name and cores, XLA_FLAGS and other JAX_* / XLA_* / CUDA_* /
    NVIDIA_* / TF_* variables, nvidia-smi's GPU line, torch's version and
    CUDA (without importing torch).
  """
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top

  devices = jax.devices()
  info = dict(
      platform=devices[0].platform,
      device_kind=devices[0].device_kind,
      device_count=len(devices),
      local_device_count=jax.local_device_count(),
      jax_version=jax.__version__,
      jaxlib_version=jaxlib.__version__,
      python_version=sys.version.split()[0],
      cpu=_results.cpu_name(),
      cpu_cores=_results.cpu_cores(),
  )
  try:
    info['platform_version'] = devices[0].client.platform_version
  except AttributeError:
    info['platform_version'] = None
  info['devices'] = []
  for d in devices:
    stats = d.memory_stats() or {}
    info['devices'].append(
        dict(id=d.id, kind=d.device_kind, bytes_limit=stats.get('bytes_limit'))
    )
  packages = {}
  for dist in importlib.metadata.distributions():
    name = (dist.metadata['Name'] or '').lower()
    if name.startswith(
        (
            'jax',
            'nvidia-cuda-runtime',
            'nvidia-cudnn',
            'nvidia-cublas',
            'dm-haiku',
            'optax',
            'torch',
            'triton',
            'orbax',
            'tensorflow',
        )
    ):
      packages[name] = dist.version
  info['packages'] = dict(sorted(packages.items()))
  info['env'] = {
      k: v
      for k, v in sorted(os.environ.items())
      if k.startswith(('JAX_', 'XLA_', 'CUDA_', 'NVIDIA_', 'TF_'))
  }
  info['xla_flags'] = os.environ.get('XLA_FLAGS', '')
  if shutil.which('nvidia-smi'):
    proc = subprocess.run(
        [
            'nvidia-smi',
            '--query-gpu=name,driver_version,memory.total,' 'clocks.max.sm',
            '--format=csv,noheader',
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    info['nvidia_smi'] = proc.stdout.strip() or proc.stderr.strip()
  info['torch'] = torch_reference.torch_missing_reason() or packages.get(
      'torch'
  )
  return info


def _environment_child(result_file: str) -> None:
  _append(result_file, environment())


def _cifar_child(spec: dict, result_file: str) -> None:
  """Section 4 in this (child) process; appends records as stages finish.

  Args:
    spec: variant ('gn_ws' | 'bn'), dataset (a data source string or ''
      for the scale's default), data_tar (a .tar.gz of the CIFAR-10 folders
      to unpack first, or ''), unpack_dir (input_pipeline.unpack_tarball's
      root, shared with the input_pipeline item), smoke, deadline
      (time.time() by which all is done), eval_reserve_s, compile_s (estimated),
      rate (assumed images/s
      for planning steps), steps (fixed step count, smoke), workdir.
    result_file: the jsonl the records go to (stage 'data', 'pretrain',
      'eval').
  """
  import threading  # pylint: disable=g-import-not-at-top

  from byol_jax.config import plan  # pylint: disable=g-import-not-at-top
  from byol_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
  from byol_jax.results import variants  # pylint: disable=g-import-not-at-top
  from byol_jax.training import pretrain  # pylint: disable=g-import-not-at-top
  from byol_jax.training import writers  # pylint: disable=g-import-not-at-top

  start = time.time()
  workdir = pathlib.Path(spec['workdir'])
  dataset = spec['dataset']
  if spec.get('data_tar'):  # once: the input_pipeline item may have done it
    from benchmarks import input_pipeline  # pylint: disable=g-import-not-at-top

    dataset = 'folder:' + input_pipeline.unpack_tarball(
        spec['data_tar'], spec.get('unpack_dir') or str(workdir / 'unpacked')
    )
  name, config_name = VARIANTS[spec['variant']]
  variant = variants.Variant(name, config_name)
  scale = 'tiny' if spec['smoke'] else 'cifar10'

  def config_for(steps):
    overrides = [
        ('training.total_steps', steps),
        # A run of minutes: warm-up a tenth of it (the preset's 10 epochs
        # would be the whole run).
        ('training.warmup_steps', max(1, steps // 10)),
        ('logging.every_steps', max(1, min(20, steps // 10))),
        ('logging.knn_every_steps', 0),  # kNN once, in the evaluation
        ('checkpoint.every_steps', 10**9),
        ('checkpoint.every_secs', 10**9),
        ('data.cache_dir', str(workdir / 'cache')),
        # The probe on frozen centre-crop features (computed once), with the
        # learning-rate sweep; fewer epochs than the paper's 80 augmented.
        ('eval.augment', False),
        ('eval.num_epochs', 10 if spec['smoke'] else 30),
    ]
    if spec['smoke']:
      overrides += [
          ('training.global_batch_size', 64),
          ('eval.global_batch_size', 256),
      ]
    # As --config.<field>=<value> strings (variants.variant_config casts them).
    return variants.variant_config(
        variant, scale, dataset, [(k, str(v)) for k, v in overrides]
    )

  built = plan.build(config_for(1))  # opens (decodes, caches) the data
  source = built.source
  record = dict(
      stage='data',
      variant=spec['variant'],
      config=f'experiments/{config_name}.py:'
      f'{variant.config_arg(scale, dataset)}',
      source=built.config.data.source,
      data_path=built.data.path,
      num_train_examples=int(built.pretrain.num_train_examples),
      image_size=int(built.config.data.image_size),
      data_seconds=time.time() - start,
  )
  _append(result_file, record)
  batch = built.config.training.global_batch_size
  train_deadline = spec['deadline'] - spec['eval_reserve_s']
  train_s = train_deadline - time.time() - spec['compile_s']
  if spec.get('steps'):
    steps = int(spec['steps'])
  else:
    steps = max(10, int(spec['rate'] * max(train_s, 0.0) / batch))
  built = plan.build(config_for(steps), source=source)
  config = built.config

  # Time between progress lines (each after the loop fetched the metrics:
  # the steps before it are done), compile and start-up excluded.
  stamps = []
  console = writers.MetricWriter.console

  def timed_console(self, step, metrics):
    stamps.append((time.perf_counter(), step))
    return console(self, step, metrics)

  writers.MetricWriter.console = timed_console

  box_reached = []
  stop = threading.Event()

  def time_box():
    if stop.wait(max(0.0, train_deadline - time.time())):
      return
    while not stop.is_set():  # until the loop's watcher has it
      box_reached.append(time.time())
      os.kill(os.getpid(), signal.SIGTERM)
      stop.wait(2.0)

  signal.signal(signal.SIGTERM, lambda *_: None)  # before the loop: ignored
  timer = threading.Thread(target=time_box, daemon=True)
  timer.start()
  t0 = time.time()
  summary = pretrain.train(built, str(workdir / 'run'))
  stop.set()
  pretrain_s = time.time() - t0
  rate = None
  if len(stamps) >= 2 and stamps[-1][1] > stamps[0][1]:
    (ta, sa), (tb, sb) = stamps[0], stamps[-1]
    rate = (sb - sa) * batch / (tb - ta)
  metrics = summary.get('metrics') or {}
  record = dict(
      stage='pretrain',
      steps_planned=steps,
      steps_done=int(summary['step']),
      global_batch=batch,
      stopped_by='time box' if summary['preempted'] else 'end of schedule',
      images_per_sec=rate,
      rate_assumed=None if spec.get('steps') else spec['rate'],
      images_per_sec_note='between the first and last progress '
      'lines (compile excluded; augmentation and the in-memory '
      'crops included)',
      pretrain_seconds=pretrain_s,
      loss_last=metrics.get('loss'),
      total_steps=int(built.pretrain.total_steps),
      warmup_steps=int(built.pretrain.warmup_steps),
      dtype=config.model.dtype,
      depth=int(config.model.depth),
  )
  _append(result_file, record)
  t0 = time.time()
  state = pretrain.load_latest_state(
      config, built.data.num_classes, str(workdir / 'run')
  )
  results = linear_eval.run_linear_eval(
      built,
      str(workdir / 'run'),
      state.online_params,
      state.online_state,
      extra={'checkpoint_step': int(summary['step'])},
  )
  _append(
      result_file,
      dict(
          stage='eval',
          knn_top1=results['knn_top1'],
          linear_top1=results['top1'],
          linear_top5=results['top5'],
          online_top1=results.get('online_top1'),
          probe_epochs=results['epochs'],
          probe_learning_rate=results['learning_rate'],
          num_train=results['num_train'],
          num_test=results['num_test'],
          eval_seconds=time.time() - t0,
      ),
  )


# --------------------------------------------------------------------------
# The suite.


class Suite:
  """Runs a Plan, writing JSON and markdown after every item."""

  def __init__(self, args, plan: Plan, argv):
    self.args, self.plan = args, plan
    self.out = pathlib.Path(args.out)
    self.out.mkdir(parents=True, exist_ok=True)
    self.log = self.out / OUT_LOG
    self.log.write_text('')
    self.tmp = pathlib.Path(tempfile.mkdtemp(prefix='device_suite_'))
    self.kind = 'smoke' if args.smoke else 'gpu'
    self.start = time.time()
    self.end = self.start + plan.budget_s - plan.margin_s
    self.result = dict(
        benchmark='device_suite',
        date=_results.today(),
        command=' '.join(
            ['python -m benchmarks.device_suite']
            + [shlex.quote(a) for a in argv]
        ),
        smoke=args.smoke,
        budget_s=plan.budget_s,
        margin_s=plan.margin_s,
        planned_s=plan.planned_s,
        plan=[
            dict(section=i.section, name=i.name, estimate_s=i.estimate_s)
            for i in plan.items
        ],
        dropped=plan.dropped,
        finished=False,
        elapsed_s=0.0,
        sections={s: dict(status='pending', items=[]) for s in SECTIONS},
    )
    for d in plan.dropped:
      self.result['sections'][d['section']]['items'].append(
          dict(name=d['name'], status='skipped', reason=d['reason'])
      )

  # Each item's box: what is left of the budget less the estimates of the
  # items after it (the last, cifar, gets all that is left).
  def box(self, index: int) -> float:
    later = sum(i.estimate_s for i in self.plan.items[index + 1 :])
    return self.end - time.time() - later

  def run(self) -> dict:
    """Runs every item; returns the result dict (also written to --out)."""
    self.write()
    for index, item in enumerate(self.plan.items):
      box = self.box(index)
      entry = dict(
          name=item.name, estimate_s=item.estimate_s, box_s=round(box, 1)
      )
      if 'skipped' in item.spec:
        entry.update(status='skipped', reason=item.spec['skipped'])
      elif box < 0.5 * item.estimate_s:
        entry.update(
            status='skipped',
            reason=f'out of time: {box:.0f} s '
            f'left for an item estimated at {item.estimate_s:.0f} s',
        )
      else:
        print(
            f'[{time.time() - self.start:6.1f} s] {item.name} '
            f'(box {box:.0f} s) ...',
            flush=True,
        )
        try:
          entry.update(getattr(self, f'_{item.section}')(item, box))
        except Exception as e:  # pylint: disable=broad-except
          entry.update(
              status='error',
              error=f'{type(e).__name__}: {e}',
              traceback=traceback.format_exc()[-1500:],
          )
      print(
          f'[{time.time() - self.start:6.1f} s] {item.name}: '
          f'{entry["status"]}'
          + (
              f' ({entry.get("reason") or entry.get("error")})'
              if entry['status'] != 'ok'
              else ''
          ),
          flush=True,
      )
      self.result['sections'][item.section]['items'].append(entry)
      self.write()
    self.result['finished'] = True
    self.write()
    return self.result

  def _child(self, argv, box, result_file, env=None) -> dict:
    run = _run_child(argv, box, self.log, env)
    records = _read_jsonl(result_file)
    status = 'ok'
    if run['timed_out']:
      status = 'timeout'
    elif run['returncode']:
      status = 'error'
    out = dict(status=status, seconds=round(run['seconds'], 1), records=records)
    if status != 'ok':
      out['error'] = (
          (
              f'killed at its time box of {box:.0f} s'
              if run['timed_out']
              else f'exit code {run["returncode"]}'
          )
          + ':\n'
          + run['tail']
      )
    return out

  def _python(self, code: str, *args) -> list:
    return [sys.executable, '-c', code, *args]

  def _environment(self, item, box):
    del item
    path = self.tmp / 'environment.jsonl'
    out = self._child(
        self._python(
            'import sys; from benchmarks import device_suite as s; '
            's._environment_child(sys.argv[1])',
            str(path),
        ),
        box,
        path,
    )
    if out['records']:
      out['result'] = out.pop('records')[-1]
      self.result['environment'] = out['result']
    elif out['status'] == 'ok':
      out.update(status='error', error='the child wrote no record')
    return out

  def _jax_step(self, item, box):
    args = throughput.parse_args(
        JAX_ARGS[self.kind]
        + [
            '--norm',
            item.spec['norm'],
            '--per_device_batch',
            str(item.spec['per_device_batch']),
        ]
    )
    (spec,) = throughput.row_specs(args)
    path = (
        self.tmp
        / f'jax_{item.spec["norm"]}_{item.spec["per_device_batch"]}.jsonl'
    )
    out = self._child(
        self._python(
            'import json, sys; from benchmarks import throughput as t; '
            'row = t.run_row(json.loads(sys.argv[1])); '
            'open(sys.argv[2], "a").write(json.dumps(row) + "\\n")',
            json.dumps(spec),
            str(path),
        ),
        box,
        path,
        # A real compile, as throughput.py's own children (smoke: whatever
        # the environment says; the row's persistent_compilation_cache
        # records it).
        env=None
        if self.args.smoke
        else dict(JAX_ENABLE_COMPILATION_CACHE='false'),
    )
    records = out.pop('records')
    if records:
      out['row'] = records[-1]
    elif out['status'] == 'ok':
      out.update(status='error', error='the child wrote no row')
    return out

  def _input_pipeline(self, item, box):
    del item
    data = self.args.data_dir
    cifar = str(pathlib.Path(data).resolve()) if data else 'none'
    out_dir = self.tmp / 'input_pipeline'
    # The tarball's unpacked folder and the decoded cache are the ones the
    # cifar item uses next (_cifar: the same unpack root and cache_dir), so
    # CIFAR-10 is unpacked and decoded once for both.
    out = self._child(
        [sys.executable, '-m', 'benchmarks.input_pipeline']
        + INPUT_ARGS[self.kind]
        + [
            f'--cifar={cifar}',
            f'--unpack_dir={self.tmp / "unpacked"}',
            f'--cache_dir={self.tmp / "cifar" / "cache"}',
            f'--out={out_dir}',
        ],
        box,
        out_dir / 'no_records.jsonl',
    )  # the results file instead
    del out['records']
    files = sorted(out_dir.glob('input_pipeline-*.json'))
    if not files:
      if out['status'] == 'ok':
        out.update(status='error', error='the child wrote no results file')
      return out
    result = json.loads(files[-1].read_text())
    out['result'] = dict(
        device=result.get('device'),
        command=result.get('command'),
        batches_timed=result.get('batches_timed'),
        results_file=files[-1].name,
        rows=result.get('in_memory', []),
    )
    if self.args.results_dir:
      dest = pathlib.Path(self.args.results_dir) / files[-1].name
      dest.parent.mkdir(parents=True, exist_ok=True)
      dest.write_text(files[-1].read_text())
      out['result']['results_file'] = str(dest)
    if out['status'] == 'ok' and not out['result']['rows']:
      out.update(status='error', error='no in-memory row measured')
    return out

  def _torch_step(self, item, box):
    path = (
        self.tmp
        / f'torch_{item.spec["norm"]}_{item.spec["per_device_batch"]}.jsonl'
    )
    out = self._child(
        [sys.executable, '-m', 'benchmarks.torch_reference']
        + TORCH_ARGS[self.kind]
        + [
            '--norm',
            item.spec['norm'],
            '--per_device_batch',
            str(item.spec['per_device_batch']),
            '--jsonl',
            str(path),
            '--no_write',
        ],
        box,
        path,
    )
    records = out.pop('records')
    if records:
      row = records[-1]
      if row.get('partial'):  # killed while compiling: the eager numbers
        row['compile_note'] = (
            'killed at the time box while compiling; ' 'eager numbers only'
        )
      if 'skipped' in row:
        out.update(status='skipped', reason=row['skipped'])
      elif 'error' in row:
        out.update(status='error', error=row['error'])
      out['row'] = row
    elif out['status'] == 'ok':
      out.update(status='error', error='the child wrote no row')
    return out

  def _cifar(self, item, box):
    est = ESTIMATES[self.kind]
    data, tar = self.args.data_dir, ''
    if data.endswith(('.tar.gz', '.tgz')):
      data, tar = '', data
    elif data:
      data = f'folder:{pathlib.Path(data).resolve()}'
    elif not self.args.smoke:
      return dict(
          status='skipped',
          reason='no CIFAR-10: pass --data_dir '
          '(the cifar10-jpg folder or its .tar.gz)',
      )
    else:
      data = 'digits'
    if tar:
      tar = str(pathlib.Path(tar).resolve())
    spec = dict(
        variant=self.args.variant,
        dataset=data,
        data_tar=tar,
        unpack_dir=str(self.tmp / 'unpacked'),
        smoke=self.args.smoke,
        deadline=time.time() + box - 5.0,
        eval_reserve_s=est['cifar_eval'],
        compile_s=est['cifar_compile'],
        rate=self.args.cifar_rate,
        steps=8 if self.args.smoke else 0,
        workdir=str(self.tmp / 'cifar'),
    )
    path = self.tmp / 'cifar.jsonl'
    out = self._child(
        self._python(
            'import json, sys; from benchmarks import device_suite as s; '
            's._cifar_child(json.loads(sys.argv[1]), sys.argv[2])',
            json.dumps(spec),
            str(path),
        ),
        box,
        path,
    )
    merged = {}
    for r in out.pop('records'):
      merged.update({k: v for k, v in r.items() if k != 'stage'})
      merged.setdefault('stages', []).append(r['stage'])
    out['result'] = merged
    if out['status'] == 'ok' and 'knn_top1' not in merged:
      out.update(status='error', error='no evaluation recorded')
    return out

  def write(self) -> None:
    """device_suite.json and .md in --out (and --results_dir), atomically."""
    self.result['elapsed_s'] = round(time.time() - self.start, 1)
    for s in SECTIONS:
      items = self.result['sections'][s]['items']
      statuses = {i['status'] for i in items}
      if not items:
        status = 'pending'
      elif statuses == {'ok'}:
        status = 'ok'
      elif 'ok' in statuses:
        status = 'partial'
      else:
        status = sorted(statuses)[0]
      self.result['sections'][s]['status'] = status
    text = json.dumps(self.result, indent=2) + '\n'
    md = render_markdown(self.result)
    targets = [(self.out / OUT_JSON, self.out / OUT_MD)]
    if self.args.results_dir and self.result.get('environment'):
      env = self.result['environment']
      slug = _results.device_slug(
          env['platform'], env['device_kind'], env['device_count']
      )
      path = _results.results_path(
          'device_suite', slug, self.result['date'], self.args.results_dir
      )
      targets.append((path, path.with_suffix('.md')))
    for json_path, md_path in targets:
      json_path.parent.mkdir(parents=True, exist_ok=True)
      for path, body in ((json_path, text), (md_path, md)):
        tmp = path.with_name(path.name + '.tmp')
        tmp.write_text(body)
        tmp.replace(path)


# --------------------------------------------------------------------------
# Markdown.


def _f(value, fmt='{:.1f}', scale=1.0):
  if value is None:
    return '-'
  return fmt.format(value / scale)


def _rows(result, section):
  return {
      (i['row'].get('norm'), i['row'].get('per_device_batch')): i['row']
      for i in result['sections'][section]['items']
      if i.get('row') and 'error' not in i['row']
  }


def input_target_line(rows) -> str:
  """The 32 px CIFAR-10 row against INPUT_TARGET_IMAGES_PER_SEC.

  Args:
    rows: input_pipeline.py's in-memory rows.

  Returns:
    One markdown line: met / missed with the rate (not applicable off a
    GPU), or why there is none.
  """
  target = f'{INPUT_TARGET_IMAGES_PER_SEC:,} images/s'
  cifar = [
      r
      for r in rows
      if r.get('image_size') == 32
      and str(r.get('dataset', '')).startswith('folder:cifar10')
  ]
  if not cifar or cifar[0].get('images_per_sec') is None:
    return (
        f'Target (>= {target} at 32 px on one H100/H200): not measured '
        '(no CIFAR-10 row: --data_dir not given).'
    )
  rate = cifar[0]['images_per_sec']
  verdict = 'met' if rate >= INPUT_TARGET_IMAGES_PER_SEC else 'missed'
  if not str(cifar[0].get('device', '')).startswith('gpu'):
    verdict = 'not applicable (a GPU target)'
  return (
      f'Target (>= {target} at 32 px on one H100/H200): **{verdict}**, '
      f'{rate:,.0f} images/s with the augmentation '
      f'({rate / INPUT_TARGET_IMAGES_PER_SEC:.2f}x the target) on '
      f'{cifar[0].get("device")}.'
  )


def input_markdown(items) -> list:
  """The input_pipeline section's markdown lines (a title, a table, the target).

  Args:
    items: the section's item entries (Suite.result).

  Returns:
    Markdown lines, ending with a blank one.
  """
  lines = [f'## {SECTION_TITLES["input_pipeline"]}', '']
  done = [i for i in items if i.get('result', {}).get('rows')]
  if not done:
    return lines
  r = done[-1]['result']
  lines += [
      'Gather, two random-resized crops per image, resize, then both '
      "views' BYOL colour augmentation, on the device after "
      f'compilation ({r.get("batches_timed")} batches timed); the '
      'training step excluded. Results file: '
      f'`{r.get("results_file")}`.',
      '',
      '| dataset | image size | batch | img/s crop+augment | '
      'crop-only img/s | compile s |',
      '|---|---|---|---|---|---|',
  ]
  for row in r['rows']:
    lines.append(
        f'| {row.get("dataset")} | {row.get("image_size")} | '
        f'{row.get("batch")} | {_f(row.get("images_per_sec"))} | '
        f'{_f(row.get("crop_only_images_per_sec"))} | '
        f'{_f(row.get("compile_s"), "{:.2f}")} |'
    )
  return lines + ['', input_target_line(r['rows']), '']


def render_markdown(result: dict) -> str:
  """The suite's result as markdown: one part per section, skips and errors.

  Args:
    result: the suite's result dict (Suite.result).

  Returns:
    Markdown text.
  """
  lines = [
      f'# Device suite, {result["date"]}',
      '',
      f'`{result["command"]}`',
      '',
      f'Budget {result["budget_s"]:.0f} s (margin {result["margin_s"]:.0f}'
      f' s), elapsed {result["elapsed_s"]:.0f} s, '
      f'{"finished" if result["finished"] else "NOT finished (so far)"}.',
      '',
  ]
  sections = result['sections']
  env = result.get('environment')
  lines += [f'## {SECTION_TITLES["environment"]}', '']
  if env:
    lines += ['| field | value |', '|---|---|']
    for key in (
        'platform',
        'device_kind',
        'device_count',
        'platform_version',
        'jax_version',
        'jaxlib_version',
        'python_version',
        'cpu',
        'cpu_cores',
        'xla_flags',
        'nvidia_smi',
        'torch',
    ):
      value = str(env.get(key, '-')).replace('\n', ' ').replace('|', '/')
      lines.append(f'| {key} | {value or "(none)"} |')
    plugins = {
        k: v
        for k, v in env.get('packages', {}).items()
        if 'cuda' in k or 'cudnn' in k
    }
    if plugins:
      lines.append(
          '| CUDA packages | '
          + ', '.join(f'{k} {v}' for k, v in plugins.items())
          + ' |'
      )
    lines.append('')
  jax_rows, torch_rows = _rows(result, 'jax_step'), _rows(result, 'torch_step')
  lines += [
      f'## {SECTION_TITLES["jax_step"]} and ' f'{SECTION_TITLES["torch_step"]}',
      '',
  ]
  if jax_rows or torch_rows:
    any_row = next(iter({**jax_rows, **torch_rows}.values()))
    lines += [
        f'ResNet-{any_row.get("depth")} at {any_row.get("image_size")}'
        f' px, {any_row.get("dtype")}, one device, augmentation '
        'included, synthetic device-resident batch. PyTorch TFLOP/s '
        'and MFU use our XLA FLOP count of the same row.',
        '',
        '| norm | batch | JAX img/s | step ms | compile s | MFU | peak '
        'GiB | PyTorch img/s (mode) | eager img/s | torch compile s | '
        'torch peak GiB | PyTorch MFU | JAX / PyTorch |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for key in sorted(set(jax_rows) | set(torch_rows), key=str):
      j, t = jax_rows.get(key, {}), torch_rows.get(key, {})
      t_mfu = None
      if (
          t.get('images_per_sec')
          and j.get('flops_per_image')
          and j.get('peak_tflops_per_sec')
      ):
        t_mfu = (
            t['images_per_sec']
            * j['flops_per_image']
            / (j['peak_tflops_per_sec'] * 1e12)
        )
      ratio = (
          j['images_per_sec'] / t['images_per_sec']
          if j.get('images_per_sec') and t.get('images_per_sec')
          else None
      )
      lines.append(
          f'| {key[0]} | {key[1]} | {_f(j.get("images_per_sec"))} | '
          f'{_f(j.get("step_time_median_s"), scale=1e-3)} | '
          f'{_f(j.get("compile_time_s"))} | '
          f'{_f(j.get("mfu"), "{:.1f}%", 0.01)} | '
          f'{_f(j.get("peak_memory_bytes"), "{:.2f}", 2**30)} | '
          f'{_f(t.get("images_per_sec"))}'
          f'{" (" + t["mode"] + ")" if t.get("mode") else ""} | '
          f'{_f(t.get("eager_images_per_sec"))} | '
          f'{_f(t.get("compile_time_s"))} | '
          f'{_f(t.get("peak_memory_bytes"), "{:.2f}", 2**30)} | '
          f'{_f(t_mfu, "{:.1f}%", 0.01)} | {_f(ratio, "{:.2f}")} |'
      )
    notes = sorted(
        {
            t['compile_note']
            for t in torch_rows.values()
            if t.get('compile_note')
        }
    )
    lines += [''] + [f'PyTorch: {n}.' for n in notes] + ([''] if notes else [])
  if sections['jax_step']['items'] and jax_rows:
    peak = next(iter(jax_rows.values())).get('peak_memory_kind')
    lines += [f'JAX peak memory: {peak}.', '']
  lines += input_markdown(sections['input_pipeline']['items'])
  cifar = [i for i in sections['cifar']['items'] if i.get('result')]
  lines += [f'## {SECTION_TITLES["cifar"]}', '']
  if cifar:
    r = cifar[-1]['result']
    lines += ['| field | value |', '|---|---|']
    for key, fmt, scale in (
        ('config', None, 1),
        ('data_path', None, 1),
        ('num_train_examples', None, 1),
        ('images_per_sec', '{:.1f}', 1),
        ('steps_done', None, 1),
        ('steps_planned', None, 1),
        ('stopped_by', None, 1),
        ('global_batch', None, 1),
        ('knn_top1', '{:.2f}%', 0.01),
        ('linear_top1', '{:.2f}%', 0.01),
        ('online_top1', '{:.2f}%', 0.01),
        ('loss_last', '{:.4f}', 1),
        ('data_seconds', '{:.1f}', 1),
        ('pretrain_seconds', '{:.1f}', 1),
        ('eval_seconds', '{:.1f}', 1),
        ('rate_assumed', None, 1),
    ):
      value = r.get(key)
      text = (
          _f(value, fmt, scale)
          if fmt and value is not None
          else str(value)
          if value is not None
          else '-'
      )
      lines.append(f'| {key} | {text} |')
    lines.append('')
  problems = [
      (s, i)
      for s in SECTIONS
      for i in sections[s]['items']
      if i['status'] != 'ok'
  ]
  if problems:
    lines += ['## Skipped, failed, timed out', '']
    for s, i in problems:
      why = (i.get('reason') or i.get('error') or '').strip().splitlines()
      lines.append(
          f'- {s} / {i["name"]}: **{i["status"]}**'
          + (f': {why[0]}' if why else '')
      )
      # The end of a traceback names the error; its top is only frames.
      lines += [f'    {w}' for w in why[1:][-6:]]
    lines.append('')
  return '\n'.join(lines)


# --------------------------------------------------------------------------


def define_flags(flag_values) -> None:
  """Defines the command line's flags on flag_values (see _cli)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_float(
      'budget_minutes',
      None,
      'whole suite, compiles included (default '
      f'{DEFAULT_BUDGET_MINUTES:g}; {DEFAULT_SMOKE_BUDGET_MINUTES:g} with '
      '--smoke)',
      **fv,
  )
  flags.DEFINE_bool(
      'smoke', False, 'tiny sizes on the CPU (JAX_PLATFORMS=cpu)', **fv
  )
  flags.DEFINE_string(
      'out',
      '/tmp/device_suite',
      'folder of ' 'device_suite.json / .md / .log, written as it goes',
      **fv,
  )
  flags.DEFINE_string(
      'results_dir',
      '',
      'also write '
      '<dir>/device_suite-<device>-<date>.json and .md '
      '(e.g. benchmarks/results)',
      **fv,
  )
  flags.DEFINE_enum(
      'variant',
      'gn_ws',
      sorted(VARIANTS),
      'CIFAR-10 run: ' 'experiments/gn_ws.py or experiments/byol_bn.py',
      **fv,
  )
  flags.DEFINE_string(
      'data_dir',
      '',
      'CIFAR-10 JPEG folders (train/, '
      'test/) or their .tar.gz; --smoke uses the digits '
      'without it',
      **fv,
  )
  flags.DEFINE_float(
      'cifar_rate',
      8000.0,
      'images/s assumed to plan the '
      'CIFAR steps (the time box stops training early if '
      'slower)',
      **fv,
  )


def check_flags(args) -> None:
  """What the flags' parsers cannot check; ValueError is a usage error."""
  if args.budget_minutes is not None and args.budget_minutes <= 0:
    raise ValueError('--budget_minutes must be > 0')


def budget_minutes(args) -> float:
  """--budget_minutes, or its default for --smoke or the GPU."""
  if args.budget_minutes is not None:
    return args.budget_minutes
  return DEFAULT_SMOKE_BUDGET_MINUTES if args.smoke else DEFAULT_BUDGET_MINUTES


def parse_args(argv):
  """The command line (see the module docstring), on fresh FlagValues.

  Args:
    argv: arguments without the program name.

  Returns:
    The parsed flags; a bad command line prints one line and exits with
    code 2.
  """
  return _cli.parse(
      define_flags, argv, check_flags, program='benchmarks.device_suite'
  )


def main(argv=None) -> dict:
  """Plans and runs the suite.

  Args:
    argv: command-line arguments (default sys.argv[1:]).

  Returns:
    The result dict, as written to <out>/device_suite.json.

  Raises:
    ValueError: a budget too small for any section.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  return run(parse_args(argv), argv)


def run(args, argv) -> dict:
  """main's body: args the parsed flags, argv the command line behind them."""
  if args.smoke:
    os.environ['JAX_PLATFORMS'] = 'cpu'  # the children inherit it
  plan = make_plan(
      budget_minutes(args) * 60.0,
      smoke=args.smoke,
      torch_missing=torch_reference.torch_missing_reason(),
  )
  print(
      f'device suite: budget {plan.budget_s:.0f} s, margin '
      f'{plan.margin_s:.0f} s, {len(plan.items)} items planned '
      f'({plan.planned_s:.0f} s estimated), {len(plan.dropped)} dropped; '
      f'writing {args.out}',
      flush=True,
  )
  suite = Suite(args, plan, argv)

  def stop(signum, frame):
    del frame
    raise KeyboardInterrupt(signal.Signals(signum).name)

  signal.signal(signal.SIGTERM, stop)
  try:
    result = suite.run()
  except KeyboardInterrupt as e:
    suite.result['interrupted'] = str(e) or 'SIGINT'
    suite.write()
    raise
  print(f'done in {result["elapsed_s"]:.0f} s: {args.out}/{OUT_MD}', flush=True)
  return result


if __name__ == '__main__':
  _cli.main_run(define_flags, run, check_flags)
