r"""The linear probe's learning-rate sweep vs one probe: wall time.

Issue 13's acceptance: the sweep over the paper's grid of base rates
{0.4, 0.3, 0.2, 0.1, 0.05} (`byol_jax.evaluation.probe.train_probes`,
the grid's probes vmapped over the rate on the same batches of frozen
features) costs under 2x one probe. This times, on synthetic features (the
step's cost does not depend on their values):

  * one probe: `train_probes` with one rate, `--steps` steps;
  * the sweep: `train_probes` with the whole grid, the same steps.

Each is run once untimed (compilation) and then `--repeats` times; the
median is reported. The protocol's full cost is sweep + one final probe
(the sweep trains on a slightly smaller split); `protocol_over_one` says
how that compares with evaluating at a single rate. Feature extraction,
which dominates on a real encoder, is shared and done once either way.

    python -m benchmarks.probe_sweep                      # ResNet-50-sized
    python -m benchmarks.probe_sweep --dim 128 --classes 10 --no_write
"""

import statistics
import sys
import time

from absl import flags
import jax
import numpy as np

from benchmarks import _cli
from benchmarks import _results

GRID = (0.4, 0.3, 0.2, 0.1, 0.05)


def _sig(seconds: float) -> float:
  """Six significant digits (milliseconds-long calls keep their ratio)."""
  return float(f'{seconds:.6g}')


def time_probes(feats, labels, peaks, *, classes, steps, batch, repeats):
  """Median wall seconds of `train_probes` (after one untimed call).

  Args:
    feats: [N, D] float32 features.
    labels: [N] int32 labels.
    peaks: the peak rates trained together.
    classes: classifier outputs.
    steps: SGD steps per call.
    batch: examples per step.
    repeats: timed calls.

  Returns:
    (median seconds, list of every timed call's seconds).
  """
  from byol_jax.evaluation import probe  # pylint: disable=g-import-not-at-top

  def once():
    start = time.perf_counter()
    params = probe.train_probes(
        feats,
        labels,
        peaks,
        num_classes=classes,
        steps=steps,
        batch_size=batch,
        momentum=0.9,
        seed=0,
    )
    jax.block_until_ready(params)
    return time.perf_counter() - start

  once()  # compile
  times = [once() for _ in range(repeats)]
  return statistics.median(times), times


def define_flags(flag_values) -> None:
  """Defines the command line's flags on flag_values (see _cli)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_integer('num_examples', 16384, 'feature rows', **fv)
  flags.DEFINE_integer('dim', 2048, 'feature size (ResNet-50: 2048)', **fv)
  flags.DEFINE_integer('classes', 1000, 'classifier outputs', **fv)
  flags.DEFINE_integer('batch', 1024, 'examples per step', **fv)
  flags.DEFINE_integer('steps', 50, 'SGD steps per call', **fv)
  flags.DEFINE_integer('repeats', 3, 'timed calls', **fv)
  flags.DEFINE_bool('no_write', False, 'write no results file', **fv)


def main(argv=None):
  """Times one probe and the sweep; writes the results file unless --no_write.

  Args:
    argv: command-line arguments (default sys.argv[1:]).

  Returns:
    The result dict.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  return run(
      _cli.parse(define_flags, argv, program='benchmarks.probe_sweep'), argv
  )


def run(args, argv):
  """main's body: args the parsed flags, argv the command line behind them."""
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(args.num_examples, args.dim)).astype(np.float32)
  labels = rng.integers(0, args.classes, args.num_examples).astype(np.int32)
  kw = dict(
      classes=args.classes,
      steps=args.steps,
      batch=args.batch,
      repeats=args.repeats,
  )
  one, one_times = time_probes(feats, labels, GRID[:1], **kw)
  sweep, sweep_times = time_probes(feats, labels, GRID, **kw)
  device = jax.devices()[0]
  result = dict(
      benchmark='probe_sweep',
      command='python -m benchmarks.probe_sweep ' + ' '.join(argv),
      device=(
          f'cpu: {_results.cpu_name()}, {_results.cpu_cores()} cores'
          if device.platform == 'cpu'
          else device.device_kind
      ),
      jax=jax.__version__,
      date=_results.today(),
      grid=list(GRID),
      num_examples=args.num_examples,
      dim=args.dim,
      classes=args.classes,
      batch=args.batch,
      steps=args.steps,
      one_probe_s=_sig(one),
      sweep_s=_sig(sweep),
      one_probe_times_s=[_sig(t) for t in one_times],
      sweep_times_s=[_sig(t) for t in sweep_times],
      sweep_over_one=round(sweep / one, 3),
      protocol_over_one=round((sweep + one) / one, 3),
  )
  print(
      f'{args.steps} steps, batch {args.batch}, {args.dim}-d features, '
      f'{args.classes} classes on {result["device"]}:'
  )
  print(
      f'  one probe {one:.3f} s; the {len(GRID)}-rate sweep {sweep:.3f} s '
      f'({result["sweep_over_one"]:.2f}x); sweep + final probe '
      f'{result["protocol_over_one"]:.2f}x one probe'
  )
  if not args.no_write:
    path = _results.write_json(
        _results.results_path(
            'probe_sweep',
            _results.device_slug(device.platform, device.device_kind, 1),
        ),
        result,
    )
    print(f'Wrote {path}')
  return result


if __name__ == '__main__':
  _cli.main_run(define_flags, run)
