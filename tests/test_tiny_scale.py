"""The paper's phenomenon at tiny scale, and the quick start's margin.

One reproduction of a slice of Table 2 at tiny scale (BN, no normalisation,
GN + WS; the exact command a user runs, in a fresh process with one CPU
device) backs two acceptance criteria:

  * issue 8: no normalisation collapses (projection collapse statistic below
    0.05) while BN and GN + WS do not (above 0.1), and their linear top-1 is
    above the no-normalisation one;
  * issue 5: the quick start (experiments/quickstart.py, which is
    gn_ws.py:tiny with the random-encoder baseline) trains an encoder whose
    linear (and kNN) top-1 beat its own random initialisation's by the
    measured margins below.

Everything is in one test so that pytest-xdist runs it once.
"""
import json
import os
import pathlib
import subprocess
import sys

from byol_jax import configs
from byol_jax import runs as runs_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ('bn', 'no_norm', 'gn_ws')
# The quick start's margins over its own random initialisation, measured
# with this exact command on a 2-core AMD EPYC CPU (jax 0.10.2, 2026-11-24;
# docs/RESULTS.md): linear top-1 88.9% vs 87.2% (+1.7 points; 297 test
# digits, so one image is 0.34 points), kNN top-1 78.8% vs 74.7% (+4.1).
# Random GN+WS features are already strong on the digits; this is the size of
# the gain a 150-step CPU run buys (100 steps: +0.3; 300 steps at batch 128:
# +1.3). The thresholds leave two images of slack on the linear probe.
QUICKSTART_LINEAR_MARGIN = 0.01
QUICKSTART_KNN_MARGIN = 0.02


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


def test_tiny_table2_collapse_and_quickstart_margin(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  cmd = [sys.executable, '-m', 'byol_jax.reproduce', '--table=2',
         '--scale=tiny', f'--workdir={tmp_path}',
         '--variants=' + ','.join(VARIANTS),
         '--override=eval.random_baseline=true']
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1500)
  assert out.returncode == 0, out.stderr[-4000:]
  runs = {name: runs_lib.load_run(tmp_path / name) for name in VARIANTS}
  proj = {n: r['final']['collapse_std_projection'] for n, r in runs.items()}
  top1 = {n: r['top1'] for n, r in runs.items()}
  summary = f'collapse std {proj}, linear top-1 {top1}'
  # Issue 8 (paper Table 2: no normalisation collapses, 0.1%).
  assert proj['no_norm'] < 0.05, summary
  assert proj['bn'] > 0.1 and proj['gn_ws'] > 0.1, summary
  assert top1['bn'] > top1['no_norm'] and top1['gn_ws'] > top1['no_norm'], (
      summary)
  # Collapse destroys even what the random initialisation had (measured:
  # 7.4% after training vs 89.9% at initialisation).
  assert top1['no_norm'] < runs['no_norm']['random_top1'] - 0.2, summary
  # Issue 5: the quick start's run is this gn_ws run (same config).
  results = json.loads((tmp_path / 'gn_ws' / 'eval_results.json').read_text())
  random = results['random_init']
  assert results['top1'] - random['top1'] >= QUICKSTART_LINEAR_MARGIN, (
      results, summary)
  assert results['knn_top1'] - random['knn_top1'] >= QUICKSTART_KNN_MARGIN, (
      results, summary)
  assert (tmp_path / 'table2.md').exists()
  for metric in runs_lib.PLOT_METRICS:
    assert (tmp_path / 'plots' / f'{metric}.png').exists()
