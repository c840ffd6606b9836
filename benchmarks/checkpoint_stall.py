r"""How long a checkpoint save stalls the training loop: sync vs async orbax.

The state is the real TrainState of a throughput row (default: BYOL,
ResNet-18 small stem, GN+WS, float32: online and target parameters, LARS
momentum), on the device, saved by `checkpointing.Checkpointer.save` as the
training loop calls it, `--saves` times per mode into a temporary folder:

  * stall_s: the time `save` blocks the caller (what the loop loses);
  * commit_s: from the call until the checkpoint is committed on disk
    (`wait`), the same as stall_s when synchronous;
  * copy_s: the device-to-host copy alone (`jax.device_get` + host copy),
    the floor of an asynchronous save's stall.

    python -m benchmarks.checkpoint_stall            # writes results/
    python -m benchmarks.checkpoint_stall --no-write --saves 2
"""

import functools
import shlex
import sys
import tempfile
import time

from absl import flags
import numpy as np

from benchmarks import _cli
from benchmarks import _results
from benchmarks import throughput


def measure(spec: dict, saves: int) -> dict:
  """Times `saves` saves of the row's TrainState per mode.

  Args:
    spec: a throughput row spec (method, norm, depth, ...).
    saves: saves per mode (the median is reported).

  Returns:
    {'state_bytes', 'copy_s', 'sync': {...}, 'async': {...}} with the
    per-save stall and commit times in seconds.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from byol_jax import experiment  # pylint: disable=g-import-not-at-top
  from byol_jax import experiment as ts  # pylint: disable=g-import-not-at-top
  from byol_jax.training import checkpointing  # pylint: disable=g-import-not-at-top

  run = throughput.make_run(spec, 1)
  config = run.config
  method, optimizer = experiment.init_objects(config, run.data.num_classes)
  state = jax.jit(functools.partial(ts.init_train_state, method, optimizer))(
      jax.random.PRNGKey(0), experiment.sample_images(config)
  )
  jax.block_until_ready(state)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  copies = []
  for _ in range(saves):
    start = time.perf_counter()
    jax.tree.map(np.array, jax.device_get(state))
    copies.append(time.perf_counter() - start)
  result = dict(state_bytes=int(state_bytes), copy_s=float(np.median(copies)))
  for mode in ('sync', 'async'):
    with tempfile.TemporaryDirectory() as folder:
      ckpt = checkpointing.Checkpointer(
          folder, max_to_keep=2, async_save=mode == 'async'
      )
      stalls, commits = [], []
      for step in range(1, saves + 1):
        # A fresh device state each time, as after a training step.
        state = jax.tree.map(
            lambda x: x + 0 if x.dtype.kind == 'f' else x, state
        )
        jax.block_until_ready(state)
        start = time.perf_counter()
        ckpt.save(step, state, {'step': step})
        stalls.append(time.perf_counter() - start)
        ckpt.wait()
        commits.append(time.perf_counter() - start)
      ckpt.close()
    result[mode] = dict(
        stall_s=[float(x) for x in stalls],
        commit_s=[float(x) for x in commits],
        stall_median_s=float(np.median(stalls)),
        commit_median_s=float(np.median(commits)),
    )
  return result


def define_flags(flag_values) -> None:
  """Defines this benchmark's flags on `flag_values` (see benchmarks/_cli.py).

  Args:
    flag_values: an absl flags.FlagValues.
  """
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('method', 'byol', 'byol or simclr', **fv)
  flags.DEFINE_string('norm', 'gn_ws', 'a throughput.NORM_PRESETS key', **fv)
  flags.DEFINE_integer('depth', 18, 'ResNet depth', **fv)
  flags.DEFINE_integer(
      'saves', 5, 'saves timed per mode (median reported)', lower_bound=1, **fv
  )
  flags.DEFINE_string(
      'out', str(_results.RESULTS_DIR), 'folder of the results file', **fv
  )
  flags.DEFINE_bool('no_write', False, 'write no results file', **fv)


def main(argv=None) -> dict:
  """Measures, prints and writes benchmarks/results/checkpoint_stall-*.json.

  Args:
    argv: command-line arguments (default sys.argv[1:]).

  Returns:
    The result dict (also written unless --no_write).
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  return run(
      _cli.parse(define_flags, argv, program='benchmarks.checkpoint_stall'),
      argv,
  )


def run(args, argv) -> dict:
  """main's body: args the parsed flags, argv the command line they came from.

  Args:
    args: the parsed flags (define_flags).
    argv: the command line, recorded in the results file.

  Returns:
    The result dict: state size, copy time, sync/async stall and commit
    times in seconds.
  """
  spec = dict(
      throughput.DEFAULT_SPEC,
      method=args.method,
      norm=args.norm,
      depth=args.depth,
  )
  measured = measure(spec, args.saves)
  import jax  # pylint: disable=g-import-not-at-top

  device = jax.local_devices()[0]
  result = dict(
      benchmark='checkpoint_stall',
      device=(
          f'cpu: {_results.cpu_name()} ({_results.cpu_cores()} cores)'
          if device.platform == 'cpu'
          else device.device_kind
      ),
      date=_results.today(),
      command=' '.join(
          ['python -m benchmarks.checkpoint_stall']
          + [shlex.quote(a) for a in argv]
      ),
      jax_version=jax.__version__,
      state=f'{args.method} resnet{args.depth} {args.norm} float32 TrainState',
      **measured,
  )
  print(
      f'{result["state"]}: {measured["state_bytes"] / 2**20:.0f} MiB, '
      f'device-to-host copy {measured["copy_s"] * 1e3:.0f} ms'
  )
  for mode in ('sync', 'async'):
    m = measured[mode]
    print(
        f'  {mode:5s} save stalls the loop {m["stall_median_s"] * 1e3:7.0f} '
        f'ms (committed after {m["commit_median_s"] * 1e3:.0f} ms)'
    )
  if not args.no_write:
    path = _results.results_path(
        'checkpoint_stall',
        _results.device_slug(device.platform, device.device_kind, 1),
        result['date'],
        args.out,
    )
    print(f'wrote {_results.write_json(path, result)}')
  return result


if __name__ == '__main__':
  _cli.main_run(define_flags, run)
