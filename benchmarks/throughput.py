r"""Training-step throughput, FLOPs, MFU and memory of the pmapped update.

For each row (method x normalisation x per-device batch x dtype) the update
that training runs (`experiment.make_update`: augmentation of both views,
forward, backward, pmean, LARS, target EMA) is compiled ahead of time and
timed on device-resident synthetic batches, so the input pipeline is excluded
(benchmarks/input_pipeline.py measures it) and the augmentation included.
Reported per row:

  * images_per_sec = global batch / median step time; step time median and
    p10/p90 over `--steps` steps, each ended by block_until_ready, after
    `--warmup` untimed steps;
  * compile_time_s: lowering + XLA compilation of the step (AOT), with the
    persistent compilation cache off, so it is a real compile;
  * flops_per_step: XLA's cost analysis of the lowered (pre-optimisation)
    HLO of one device's program, times the number of devices (where the
    backend gives none, e.g. GPU under jax 0.11, the same step lowered for
    the CPU backend: flops_source says which);
    flops_per_image = that / global batch, also compared with the analytic
    count (benchmarks/flops.py); tflops_per_sec = flops_per_step / median
    step time; mfu = that / the devices' dense peak (flops.PEAK_FLOPS; null
    where no defensible peak is known, CPUs included, with a note);
  * peak_memory_bytes: the allocator's peak_bytes_in_use where
    device.memory_stats() has it (GPU, TPU); on CPU it has none, and the
    process's peak resident set size stands in, labelled so in
    peak_memory_kind; plus compiled_memory_bytes, XLA's buffer assignment
    for the step on one device.

Each row runs in a fresh child process (unless --no_isolate), so its peak
memory and compile time are its own, and the parent never initialises an
accelerator (on GPU it would preallocate the memory the child needs). The
results file also holds `flop_check`: XLA's FLOPs
of ResNet-50 BYOL at 224 px against the analytic 65.8 GFLOP per image.

    # CPU (one real device; no --xla_force_host_platform_device_count):
    python -m benchmarks.throughput --method byol,simclr --norm bn,gn_ws
    # H100 / H200:
    python -m benchmarks.throughput --depth 50 --stem imagenet \
        --image_size 224 --per_device_batch 128,256 --dtype bfloat16 \
        --norm bn,gn_ws
    # a quick smoke run that writes nothing:
    python -m benchmarks.throughput --depth 10 --width 0.25 --image_size 16 \
        --per_device_batch 8 --steps 3 --no_write --no_flop_check
"""

import functools
import json
import os
import shlex
import subprocess
import sys
import time

from absl import flags
import numpy as np

from benchmarks import _cli
from benchmarks import _results
from benchmarks import flops

# Normalisation presets, one key per component (DESIGN.md rule 7).
NORM_PRESETS = {
    'bn': dict(
        encoder_norm='bn',
        projector_norm='bn',
        predictor_norm='bn',
        encoder_ws=False,
        heads_ws=False,
    ),  # vanilla BYOL, Table 2.
    # GroupNorm(16) + WS in the encoder, GroupNorm heads: experiments/gn_ws.py
    # (paper §3.3).
    'gn_ws': dict(
        encoder_norm='gn',
        projector_norm='gn',
        predictor_norm='gn',
        encoder_ws=True,
        heads_ws=False,
    ),
    'none': dict(
        encoder_norm='none',
        projector_norm='none',
        predictor_norm='none',
        encoder_ws=False,
        heads_ws=False,
    ),
}
OVERRIDES = (
    'encoder_norm',
    'projector_norm',
    'predictor_norm',
    'encoder_ws',
    'heads_ws',
    'gn_groups',
)
DEFAULT_SPEC = dict(
    method='byol',
    norm='bn',
    depth=18,
    width=1.0,
    stem='small',
    image_size=32,
    per_device_batch=32,
    accumulation_steps=1,  # micro-batches per device batch (lax.scan)
    dtype='float32',
    num_classes=10,
    num_devices=None,
    steps=20,
    warmup=3,
    overrides={},
)


def make_run(spec: dict, num_devices: int):
  """The experiment config of one benchmark row.

  Args:
    spec: a row spec (keys of DEFAULT_SPEC): method, norm preset, depth,
      width, stem, image_size, per_device_batch, dtype, num_classes, and
      `overrides` of model fields (OVERRIDES) applied over the preset.
    num_devices: devices the step is pmapped over.

  Returns:
    The built plan.Run; raises ValueError (plan.ConfigError)
    naming the field when the row cannot run.
  """
  from byol_jax.config import configs  # pylint: disable=g-import-not-at-top
  from byol_jax.config import plan  # pylint: disable=g-import-not-at-top

  if spec['norm'] not in NORM_PRESETS:
    raise ValueError(
        f'norm={spec["norm"]!r}; use one of '
        f'{", ".join(NORM_PRESETS)} (and --encoder_norm etc. to '
        'override one component).'
    )
  model = dict(
      NORM_PRESETS[spec['norm']],
      depth=spec['depth'],
      width_multiplier=spec['width'],
      stem=spec['stem'],
      dtype=spec['dtype'],
  )
  model.update(spec.get('overrides') or {})
  config = configs.experiment_config(None, method=spec['method'], model=model)
  global_batch = spec['per_device_batch'] * num_devices
  config.data.update(
      dict(
          source=f'synthetic:{spec["image_size"]}',
          image_size=spec['image_size'],
          num_classes=spec['num_classes'],
      )
  )
  # The schedules only need to be well defined: their values do not change
  # the cost of a step.
  config.training.update(
      dict(
          global_batch_size=global_batch,
          total_steps=1000,
          warmup_steps=10,
          accumulation_steps=spec.get('accumulation_steps', 1),
      )
  )
  config.eval.global_batch_size = global_batch
  # Built like every run (plan.build validates and derives); no image is
  # read: the synthetic source's sizes are known.
  return plan.build(
      config, topology=plan.Topology(1, num_devices), read_data=False
  )


def _batch(config, num_classes, num_devices, seed=0):
  """Synthetic [devices, per-device batch, ...] views in [0, 1] and labels."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  b = config.training.global_batch_size // num_devices
  size = config.data.image_size
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  shape = (num_devices, b, size, size, 3)
  return {
      'view1': jax.random.uniform(k1, shape, jnp.float32),
      'view2': jax.random.uniform(k2, shape, jnp.float32),
      'label': jax.random.randint(k3, shape[:2], 0, num_classes, jnp.int32),
  }


def _reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS mark (Linux >= 4.0); False if impossible."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def _peak_rss_bytes() -> int:
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  import resource  # pylint: disable=g-import-not-at-top

  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_memory(devices, rss_reset: bool):
  """(bytes, kind): the device allocator's peak, else the host RSS peak."""
  stats = [d.memory_stats() for d in devices]
  if all(s and 'peak_bytes_in_use' in s for s in stats):
    return (
        max(s['peak_bytes_in_use'] for s in stats),
        'device_peak_bytes_in_use (max over devices)',
    )
  return _peak_rss_bytes(), (
      f'host_rss_peak: device.memory_stats() has no peak on '
      f'{devices[0].platform}, so the peak resident set size of the whole '
      'process (Python, XLA compilation, buffers) stands in, '
      f'{"from row start" if rss_reset else "since process start"}'
  )


def run_row(spec: dict) -> dict:
  """Compiles and times one row in this process.

  Args:
    spec: a row spec (see make_run), with num_devices (None: all local
      devices), steps (timed) and warmup (untimed steps after compilation).

  Returns:
    The row's result dict (config fields and measurements).
  """
  import jax  # pylint: disable=g-import-not-at-top

  from byol_jax import experiment  # pylint: disable=g-import-not-at-top
  from byol_jax.hosts import parallel  # pylint: disable=g-import-not-at-top

  devices = jax.local_devices()
  n = spec.get('num_devices') or len(devices)
  if n > len(devices):
    raise ValueError(
        f'num_devices={n} but this host has {len(devices)} '
        'local devices; pass --num_devices <= that.'
    )
  devices = devices[:n]
  built = make_run(spec, n)
  config, num_classes = built.config, built.data.num_classes
  rss_reset = _reset_peak_rss()
  method, optimizer, update = experiment.make_update(config, built.pretrain)
  init = jax.jit(
      functools.partial(experiment.init_train_state, method, optimizer)
  )
  state = parallel.replicate(
      init(jax.random.PRNGKey(0), experiment.sample_images(config)), devices
  )
  batch = jax.device_put(
      jax.jit(functools.partial(_batch, config, num_classes, n))(),
      parallel.device_sharding(devices),
  )
  step = experiment.pmap_update(update, devices=devices)

  start = time.perf_counter()
  lowered = step.lower(state, batch)
  lower_time = time.perf_counter() - start
  compiled = lowered.compile()
  compile_time = time.perf_counter() - start  # lowering included.
  per_device_flops = flops.cost_flops(lowered)
  flops_source = 'lowered HLO, this backend'
  accumulating = spec.get('accumulation_steps', 1) > 1
  if accumulating:
    # XLA counts a loop's body once; accumulating over micro-batches does the
    # arithmetic of the whole batch, so count the step without it.
    per_device_flops = _cpu_step_flops(dict(spec, accumulation_steps=1))
    flops_source = 'lowered HLO of the same step unaccumulated, cpu backend'
  elif per_device_flops is None:
    # Some backends (GPU under jax 0.11) give no cost analysis of the
    # pre-optimisation HLO; the step's arithmetic does not depend on the
    # backend, so count the same one-device step lowered for the CPU.
    per_device_flops = _cpu_step_flops(spec)
    flops_source = 'lowered HLO, cpu backend (this backend gave none)'
  flops_per_step = per_device_flops * n
  # The compiled loop's body would be counted once.
  compiled_flops = None if accumulating else flops.cost_flops(compiled)
  memory = compiled.memory_analysis()

  times, metrics = [], None
  for i in range(spec['warmup'] + spec['steps']):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    if i >= spec['warmup']:
      times.append(time.perf_counter() - start)
  p10, median, p90 = (float(t) for t in np.percentile(times, [10, 50, 90]))

  peak_memory, peak_memory_kind = _peak_memory(devices, rss_reset)
  global_batch = config.training.global_batch_size
  peak, peak_name = flops.peak_flops(devices[0].device_kind, spec['dtype'])
  achieved = flops_per_step / median
  analytic = flops.analytic_flops_per_image(config)
  m = config.model
  row = dict(
      method=spec['method'],
      norm=spec['norm'],
      encoder_norm=m.encoder_norm,
      projector_norm=m.projector_norm,
      predictor_norm=m.predictor_norm,
      encoder_ws=m.encoder_ws,
      heads_ws=m.heads_ws,
      gn_groups=m.gn_groups,
      depth=m.depth,
      width=m.width_multiplier,
      stem=m.stem,
      image_size=config.data.image_size,
      dtype=m.dtype,
      num_classes=num_classes,
      num_devices=n,
      per_device_batch=spec['per_device_batch'],
      accumulation_steps=config.training.accumulation_steps,
      global_batch=global_batch,
      steps_timed=spec['steps'],
      warmup_steps=spec['warmup'],
      images_per_sec=global_batch / median,
      step_time_median_s=median,
      step_time_p10_s=p10,
      step_time_p90_s=p90,
      lower_time_s=lower_time,
      compile_time_s=compile_time,
      peak_memory_bytes=peak_memory,
      peak_memory_kind=peak_memory_kind,
      # XLA's buffer assignment for the step, per device (what it needs
      # beyond the runtime: inputs + outputs - donated aliases + temporaries).
      compiled_memory_bytes=(
          memory.argument_size_in_bytes
          + memory.output_size_in_bytes
          - memory.alias_size_in_bytes
          + memory.temp_size_in_bytes
      )
      if memory
      else None,
      flops_per_step=flops_per_step,
      flops_source=flops_source,
      flops_per_image=flops_per_step / global_batch,
      compiled_flops_per_step=compiled_flops * n if compiled_flops else None,
      analytic_flops_per_image=analytic,
      flops_vs_analytic_ratio=flops_per_step / global_batch / analytic,
      tflops_per_sec=achieved / 1e12,
      peak_tflops_per_sec=peak * n / 1e12 if peak else None,
      peak_source=peak_name,
      mfu=achieved / (peak * n) if peak else None,
      loss_last_step=float(np.asarray(metrics['loss'])[0]),
      persistent_compilation_cache=bool(
          jax.config.jax_enable_compilation_cache
          and jax.config.jax_compilation_cache_dir
      ),
      platform=devices[0].platform,
      device_kind=devices[0].device_kind,
  )
  if not peak:
    row['mfu_note'] = (
        flops.CPU_MFU_NOTE
        if devices[0].platform == 'cpu'
        else f'no peak FLOP/s known for {devices[0].device_kind!r}; '
        'add it to benchmarks/flops.py PEAK_FLOPS'
    )
  return row


def flop_check(per_device_batch: int = 8) -> dict:
  """Issue 7's acceptance: XLA's FLOPs of ResNet-50 BYOL at 224 px vs 65.8 G.

  Lowering only, on one device (~10 s on a CPU); per-device batch 8 makes the
  batch-independent costs (LARS, EMA: ~0.1 GFLOP per step) negligible.
  """
  spec = dict(
      DEFAULT_SPEC,
      depth=50,
      width=1.0,
      stem='imagenet',
      image_size=224,
      num_classes=1000,
      per_device_batch=per_device_batch,
  )
  built = make_run(spec, 1)
  start = time.perf_counter()
  per_image = flops.step_flops(built, 1) / per_device_batch
  issue = flops.ISSUE_RESNET50_BYOL_FLOPS_PER_IMAGE
  return dict(
      config='byol resnet50 bn float32 224px',
      per_device_batch=per_device_batch,
      flops_per_image=per_image,
      issue_flops_per_image=issue,
      flops_vs_issue_ratio=per_image / issue,
      analytic_flops_per_image=flops.analytic_flops_per_image(built.config),
      seconds=time.perf_counter() - start,
  )


def _in_child(code: str, **env_overrides):
  """Runs `code` (which prints one JSON line last) in a fresh interpreter.

  Rows run in children so that the peak memory, the compile time and the
  allocator belong to one row, and so that this parent never initialises an
  accelerator (on GPU it would preallocate the memory the child needs). The
  persistent compilation cache is off there: a hit would time a load, not a
  compile.
  """
  env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE='false', **env_overrides)
  proc = subprocess.run(
      [sys.executable, '-c', code],
      cwd=_results.REPO,
      env=env,
      capture_output=True,
      text=True,
      check=False,
  )
  if proc.returncode:
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-12:]
    raise RuntimeError(
        f'child exited with {proc.returncode}:\n' + '\n'.join(tail)
    )
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_isolated(spec: dict) -> dict:
  return _in_child(
      'import json; from benchmarks import throughput as t; '
      f'print(json.dumps(t.run_row(json.loads({json.dumps(spec)!r}))))'
  )


def _flop_check_isolated() -> dict:
  # Lowering only, and the count is backend-independent: on the CPU backend,
  # which every jax has and which always cost-analyses lowered HLO.
  return _in_child(
      'import json; from benchmarks import throughput as t; '
      'print(json.dumps(t.flop_check()))',
      JAX_PLATFORMS='cpu',
  )


def _cpu_step_flops(spec: dict) -> float:
  """XLA's FLOPs of one device's step of `spec`, lowered on the CPU backend.

  For backends whose Lowered.cost_analysis() is empty. Runs in a child with
  JAX_PLATFORMS=cpu (this process has its accelerator initialised).
  """
  one = dict(spec, num_devices=1)
  return float(
      _in_child(
          'import json; from benchmarks import throughput as t, flops as f; '
          f'spec = json.loads({json.dumps(one)!r}); '
          'print(json.dumps(f.step_flops(t.make_run(spec, 1), 1)))',
          JAX_PLATFORMS='cpu',
      )
  )


def row_specs(args) -> list:
  """The rows of a command line: method x norm x dtype x per-device batch."""
  overrides = {
      k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None
  }
  num_classes = args.num_classes or (1000 if args.stem == 'imagenet' else 10)
  return [
      dict(
          method=method,
          norm=norm,
          depth=args.depth,
          width=args.width,
          stem=args.stem,
          image_size=args.image_size,
          per_device_batch=batch,
          accumulation_steps=accumulation,
          dtype=dtype,
          num_classes=num_classes,
          num_devices=args.num_devices,
          steps=args.steps,
          warmup=args.warmup,
          overrides=overrides,
      )
      for method in args.method
      for norm in args.norm
      for dtype in args.dtype
      for batch in args.per_device_batch
      for accumulation in args.accumulation_steps
  ]


def _fmt(value, scale=1.0, digits=1, suffix=''):
  return '-' if value is None else f'{value / scale:.{digits}f}{suffix}'


def print_table(rows) -> None:
  """One line per row: throughput, spread, compile, FLOPs, MFU, memory."""
  print(
      f'\n{"method":7s} {"norm":6s} {"dtype":8s} {"batch":>5s} {"acc":>3s} '
      f'{"img/s":>8s} {"step ms":>8s} {"p10-p90 ms":>13s} {"compile s":>9s} '
      f'{"GFLOP/img":>9s} {"TFLOP/s":>8s} {"MFU":>6s} {"mem GiB":>7s}'
  )
  for r in rows:
    head = (
        f'{r["method"]:7s} {r["norm"]:6s} {r["dtype"]:8s} '
        f'{r["per_device_batch"]:5d} {r.get("accumulation_steps", 1):3d} '
    )
    if 'error' in r:
      print(head + 'error: ' + r['error'].splitlines()[-1])
      continue
    spread = (
        f'{r["step_time_p10_s"] * 1e3:.1f}-' f'{r["step_time_p90_s"] * 1e3:.1f}'
    )
    print(
        head + f'{r["images_per_sec"]:8.1f} '
        f'{r["step_time_median_s"] * 1e3:8.1f} {spread:>13s} '
        f'{r["compile_time_s"]:9.1f} '
        f'{_fmt(r["flops_per_image"], 1e9, 2):>9s} '
        f'{_fmt(r["tflops_per_sec"], 1., 3):>8s} '
        f'{_fmt(r["mfu"], 0.01, 1, "%"):>6s} '
        f'{_fmt(r["peak_memory_bytes"], 2**30, 2):>7s}'
    )


def define_flags(flag_values) -> None:
  """Defines the command line's flags on flag_values (see _cli)."""
  fv = dict(flag_values=flag_values)
  _cli.define_csv('method', ['byol'], 'comma-separated: byol,simclr', **fv)
  _cli.define_csv(
      'norm',
      ['bn', 'gn_ws'],
      f'comma-separated presets from {",".join(NORM_PRESETS)}',
      **fv,
  )
  flags.DEFINE_integer('depth', DEFAULT_SPEC['depth'], 'ResNet depth', **fv)
  flags.DEFINE_float('width', DEFAULT_SPEC['width'], 'width multiplier', **fv)
  flags.DEFINE_string('stem', DEFAULT_SPEC['stem'], 'small | imagenet', **fv)
  flags.DEFINE_integer(
      'image_size', DEFAULT_SPEC['image_size'], 'image side in pixels', **fv
  )
  _cli.define_csv(
      'per_device_batch',
      [DEFAULT_SPEC['per_device_batch']],
      'comma-separated',
      kind=int,
      **fv,
  )
  _cli.define_csv(
      'accumulation_steps',
      [1],
      'comma-separated micro-batches per device batch (peak memory falls)',
      kind=int,
      **fv,
  )
  _cli.define_csv(
      'dtype', ['float32'], 'comma-separated: float32,bfloat16', **fv
  )
  flags.DEFINE_integer(
      'num_classes',
      None,
      'online classifier outputs (default 1000 with '
      'the imagenet stem, else 10)',
      **fv,
  )
  flags.DEFINE_integer(
      'num_devices',
      None,
      'devices to pmap over (default: ' 'all local devices)',
      **fv,
  )
  for component in ('encoder', 'projector', 'predictor'):
    flags.DEFINE_string(
        f'{component}_norm',
        None,
        f"override the preset's {component} norm",
        **fv,
    )
  flags.DEFINE_bool(
      'encoder_ws',
      None,
      "override the preset's encoder "
      'weight standardisation (--encoder_ws / --noencoder_ws)',
      **fv,
  )
  flags.DEFINE_bool(
      'heads_ws',
      None,
      "override the preset's heads weight "
      'standardisation (--heads_ws / --noheads_ws)',
      **fv,
  )
  flags.DEFINE_integer('gn_groups', None, "override GroupNorm's groups", **fv)
  flags.DEFINE_integer('steps', DEFAULT_SPEC['steps'], 'timed steps', **fv)
  flags.DEFINE_integer(
      'warmup', DEFAULT_SPEC['warmup'], 'untimed steps after compilation', **fv
  )
  flags.DEFINE_bool(
      'no_isolate',
      False,
      'run rows in this process (peak ' 'memory then spans rows)',
      **fv,
  )
  flags.DEFINE_bool(
      'no_flop_check',
      False,
      'skip the ResNet-50 BYOL 224px ' 'FLOP check (~10 s)',
      **fv,
  )
  flags.DEFINE_string(
      'out', str(_results.RESULTS_DIR), 'folder of the results file', **fv
  )
  flags.DEFINE_bool('no_write', False, 'write no results file', **fv)


def check_flags(args) -> None:
  """What the flags' parsers cannot check; ValueError is a usage error."""
  if args.steps < 1 or args.warmup < 0:
    raise ValueError('--steps must be >= 1 and --warmup >= 0')
  for dtype in args.dtype:
    if dtype not in ('float32', 'bfloat16'):
      raise ValueError(f'--dtype {dtype!r}: use float32 or bfloat16')


def parse_args(argv):
  """The command line (see the module docstring), on fresh FlagValues.

  Args:
    argv: arguments without the program name, e.g. ['--depth=50'].

  Returns:
    The parsed flags (attributes: args.depth ...); a bad command line
    prints one line and exits with code 2.
  """
  return _cli.parse(
      define_flags, argv, check_flags, program='benchmarks.throughput'
  )


def main(argv=None) -> dict:
  """Runs the rows of a command line and writes the results file.

  Args:
    argv: command-line arguments (default sys.argv[1:]).

  Returns:
    The result dict (device, date, command, versions, flop_check, rows), as
    written to <out>/throughput-<device>-<date>.json unless --no_write.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  return run(parse_args(argv), argv)


def run(args, argv) -> dict:
  """main's body: args the parsed flags, argv the command line behind them."""
  specs = row_specs(args)
  for spec in specs:  # Bad configs fail here, before anything compiles.
    make_run(spec, spec['num_devices'] or 1)
  rows = []
  for spec in specs:
    print(
        f'{spec["method"]} {spec["norm"]} {spec["dtype"]} per-device batch '
        f'{spec["per_device_batch"]} ...',
        flush=True,
    )
    try:
      row = run_row(spec) if args.no_isolate else _run_isolated(spec)
    except RuntimeError as e:  # e.g. out of memory at a big batch: record it.
      row = dict(spec, error=str(e))
      print(f'  failed: {e}', file=sys.stderr, flush=True)
    else:
      print(
          f'  {row["images_per_sec"]:.1f} img/s, '
          f'{row["step_time_median_s"] * 1e3:.1f} ms/step',
          flush=True,
      )
    rows.append(row)
  done = [r for r in rows if 'error' not in r]
  if not done:
    raise RuntimeError('every row failed; see the errors above.')
  check = None
  if not args.no_flop_check:
    check = flop_check() if args.no_isolate else _flop_check_isolated()

  import jax  # pylint: disable=g-import-not-at-top  (no backend initialised)

  first = done[0]
  cpu = first['platform'] == 'cpu'
  result = dict(
      benchmark='throughput',
      device=(
          f'cpu: {_results.cpu_name()} ({_results.cpu_cores()} cores)'
          if cpu
          else first['device_kind']
      ),
      platform=first['platform'],
      device_kind=first['device_kind'],
      num_devices=first['num_devices'],
      date=_results.today(),
      command=' '.join(
          ['python -m benchmarks.throughput'] + [shlex.quote(a) for a in argv]
      ),
      jax_version=jax.__version__,
      python_version=sys.version.split()[0],
      isolated=not args.no_isolate,
      load_average_1min_after=round(os.getloadavg()[0], 2),
      flop_check=check,
      rows=rows,
  )
  print_table(rows)
  if check:
    print(
        f'\nResNet-50 BYOL 224px: {check["flops_per_image"] / 1e9:.2f} '
        'GFLOP/image (XLA cost analysis) vs '
        f'{check["issue_flops_per_image"] / 1e9:.1f} (analytic): ratio '
        f'{check["flops_vs_issue_ratio"]:.3f}'
    )
  if not args.no_write:
    device = _results.device_slug(
        first['platform'], first['device_kind'], first['num_devices']
    )
    path = _results.results_path('throughput', device, result['date'], args.out)
    print(f'wrote {_results.write_json(path, result)}')
  return result


if __name__ == '__main__':
  _cli.main_run(define_flags, run, check_flags)
