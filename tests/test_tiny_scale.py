"""The paper's phenomenon at tiny scale, and the quick start's margin.

Two user commands, run at once in fresh processes with one CPU device, back
two acceptance criteria:

  * the quick start, exactly as README.md shows it (experiments/quickstart.py:
    gn_ws.py:tiny with the random-encoder baseline, 150 steps). Issue 5: it
    trains an encoder whose linear (and kNN) top-1 beat its own random
    initialisation's by the measured margins below. Issue 8: GN + WS does not
    collapse (projection collapse statistic above 0.1);
  * a slice of Table 2 at tiny scale, `python -m byol_jax.reproduce --table=2
    --scale=tiny --variants=bn,no_norm`, shortened to 100 steps and at the
    digits' own 8x8 pixels (`data.image_size=8`; the preset upsamples them to
    16 px, which costs 4x the FLOPs for the same collapse, below). Issue 8: no
    normalisation collapses (projection statistic below 0.05), BN does not
    (above 0.1), and the linear top-1 of BN and GN + WS is above the
    no-normalisation one (GN + WS is the quick start's, at 16 px; each
    probe reads its own run's frozen features). Measured on this CPU with
    the command below (COLLAPSE_OVERRIDES): BN projection statistic 0.855,
    top-1 94.9%; no normalisation 0.001, top-1 41.4% against its random
    encoder's 86.2%; both variants in 56 s wall, 89 CPU-s (at 16 px: 100
    steps gave no normalisation 0.003 and 39.4% against 89.9%, in about 290
    CPU-s; 50 steps at 16 px gave 0.031 but 84.2%, failing the last bound;
    at 150 steps, the full tiny Table 2 of docs/RESULTS.md, 7.4%). The quick
    start keeps its 16 px: at 8 px its kNN top-1 falls below its random
    encoder's (80.1% vs 87.2%, `--config.data.image_size=8`), so the preset
    is not changed.

Everything is in one test so that pytest-xdist runs it once; the two
commands run concurrently so that the test is not the suite's long pole.
"""
import json
import os
import pathlib
import subprocess
import sys

from byol_jax import configs
from byol_jax import runs as runs_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
COLLAPSE_VARIANTS = ('bn', 'no_norm')
COLLAPSE_STEPS = 100
COLLAPSE_OVERRIDES = (f'training.total_steps={COLLAPSE_STEPS}',
                      'data.image_size=8', 'eval.random_baseline=true')
# The quick start's margins over its own random initialisation. The
# thresholds were set on the tiny preset of 2026-11-24 (2-core AMD EPYC CPU,
# jax 0.10.2): linear top-1 88.9% vs 87.2% (+1.7 points; 297 test digits, so
# one image is 0.34 points), kNN top-1 78.8% vs 74.7% (+4.1); 100 steps gave
# +0.3, 300 steps at batch 128 +1.3. They leave two images of slack on the
# linear probe. The preset has changed since (trust coefficient, predictor
# rate): the same config now measures 94.9% vs 80.8% (the GN+WS row of
# `python -m byol_jax.reproduce --table=2 --scale=tiny
# --override=eval.random_baseline=true` at 6b3db6d; docs/RESULTS.md).
QUICKSTART_LINEAR_MARGIN = 0.01
QUICKSTART_KNN_MARGIN = 0.02
TIMEOUT_S = 1500


def _config(name, arg):
  return configs.load_experiment(name, arg)


def test_quickstart_is_gn_ws_tiny_with_the_random_baseline():
  quick = _config('quickstart', '').to_dict()
  gn = _config('gn_ws', 'tiny')
  gn.eval.random_baseline = True
  gn = gn.to_dict()
  # `options` records what the user typed: nothing for the quick start.
  assert (quick.pop('options'), gn.pop('options')) == ('', 'tiny')
  assert quick == gn


def _start(cmd, log):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  with log.open('w') as f:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f,
                            stderr=subprocess.STDOUT)


def _finish(proc, log):
  try:
    proc.wait(timeout=TIMEOUT_S)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 0, log.read_text()[-4000:]


def test_tiny_table2_collapse_and_quickstart_margin(tmp_path):
  quickstart = tmp_path / 'quickstart'
  table = tmp_path / 'table2'
  procs = {
      'quickstart': _start(
          [sys.executable, '-m', 'byol_jax.main',
           '--config=experiments/quickstart.py', f'--workdir={quickstart}'],
          tmp_path / 'quickstart.log'),
      'table2': _start(
          [sys.executable, '-m', 'byol_jax.reproduce', '--table=2',
           '--scale=tiny', f'--workdir={table}',
           '--variants=' + ','.join(COLLAPSE_VARIANTS),
           *(f'--override={o}' for o in COLLAPSE_OVERRIDES)],
          tmp_path / 'table2.log')}
  try:
    for name, proc in procs.items():
      _finish(proc, tmp_path / f'{name}.log')
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
  runs = {name: runs_lib.load_run(table / name) for name in COLLAPSE_VARIANTS}
  runs['gn_ws'] = runs_lib.load_run(quickstart)
  assert [r['last_step'] for r in runs.values()] == [COLLAPSE_STEPS] * 2 + [150]
  proj = {n: r['final']['collapse_std_projection'] for n, r in runs.items()}
  top1 = {n: r['top1'] for n, r in runs.items()}
  summary = f'collapse std {proj}, linear top-1 {top1}'
  # Issue 8 (paper Table 2: no normalisation collapses, 0.1%).
  assert proj['no_norm'] < 0.05, summary
  assert proj['bn'] > 0.1 and proj['gn_ws'] > 0.1, summary
  assert top1['bn'] > top1['no_norm'] and top1['gn_ws'] > top1['no_norm'], (
      summary)
  # Collapse destroys even what the random initialisation had (measured:
  # 41.4% after 100 steps vs 86.2% at initialisation).
  assert top1['no_norm'] < runs['no_norm']['random_top1'] - 0.2, summary
  # Issue 5: the quick start beats its own random initialisation.
  results = json.loads((quickstart / 'eval_results.json').read_text())
  random = results['random_init']
  assert results['top1'] - random['top1'] >= QUICKSTART_LINEAR_MARGIN, (
      results, summary)
  assert results['knn_top1'] - random['knn_top1'] >= QUICKSTART_KNN_MARGIN, (
      results, summary)
  assert (table / 'table2.md').exists()
  for metric in runs_lib.PLOT_METRICS:
    assert (table / 'plots' / f'{metric}.png').exists()
