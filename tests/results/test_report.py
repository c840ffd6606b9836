"""Golden tests for byol_jax/results/report.py (runs, plots) on fixture runs.

tests/fixtures/report/{bn,gn_ws,nonorm} are three tiny runs (4 logged steps
plus kNN-monitor rows). bn and gn_ws have pretrain_done.json (with a recorded
wall time) and eval_results.json; nonorm has neither, so its wall time comes
from file mtimes (set here) and its kNN from the training-time monitor.
"""

import os
import pathlib
import shutil

import numpy as np
import pytest

from byol_jax.results import plots
from byol_jax.results import report
from byol_jax.results import runs as runs_lib

FIXTURES = pathlib.Path(__file__).parents[1] / 'fixtures' / 'report'
RUNS = ('bn', 'gn_ws', 'nonorm')
T0 = 1_700_000_000


@pytest.fixture
def workdirs(tmp_path):
  """Copies of the fixture runs, nonorm's mtimes pinned 95 s apart."""
  dirs = []
  for name in RUNS:
    shutil.copytree(FIXTURES / name, tmp_path / 'runs' / name)
    dirs.append(str(tmp_path / 'runs' / name))
  os.utime(tmp_path / 'runs/nonorm/config.json', (T0, T0))
  os.utime(tmp_path / 'runs/nonorm/metrics.jsonl', (T0 + 95, T0 + 95))
  return dirs


def test_markdown_table_matches_golden_file(workdirs):
  runs = [runs_lib.load_run(w) for w in workdirs]
  expected = (FIXTURES / 'expected_table.md').read_text()
  assert report.markdown_table(runs) == expected


def test_load_run_fields(workdirs):
  bn, gn_ws, nonorm = (runs_lib.load_run(w) for w in workdirs)
  assert bn['name'] == 'bn'
  assert gn_ws['variant'] == 'BYOL enc=gn+ws proj=gn pred=gn'
  assert bn['paper_top1'] == 74.3
  # Final collapse stats come from the last row holding them, not the last
  # row (a knn_top1-only row).
  assert bn['final']['collapse_std_projection'] == 0.69049
  assert bn['final']['knn_top1'] == 0.884
  assert (bn['last_step'], bn['total_steps']) == (40, 40)
  assert (bn['wall_time_s'], bn['wall_time_exact']) == (754.4, True)
  assert (nonorm['wall_time_s'], nonorm['wall_time_exact']) == (95.0, False)
  assert nonorm['top1'] is None and not nonorm['finished']
  assert bn['finished'] and bn['top1'] == 0.9512
  assert (gn_ws['random_top1'], bn['random_top1']) == (0.9, None)
  assert (gn_ws['random_knn_top1'], gn_ws['online_top1']) == (0.88, 0.4212)
  assert bn['random_knn_top1'] is None and bn['online_top1'] is None


def test_variant_label_simclr_and_modified_init():
  config = {
      'method': 'simclr',
      'model': {
          'encoder_norm': 'affine',
          'projector_norm': 'affine',
          'predictor_norm': 'affine',
          'encoder_ws': False,
          'heads_ws': True,
      },
      'training': {'modified_init': True},
  }
  assert (
      runs_lib.variant_label(config)
      == 'SIMCLR enc=affine proj=affine+ws +modified init'
  )


def test_plots_are_pngs_with_one_line_per_run(workdirs, tmp_path):
  import matplotlib.image as mpimg  # pylint: disable=g-import-not-at-top

  runs = [runs_lib.load_run(w) for w in workdirs]
  out = plots.plot(runs, tmp_path / 'out', title='fixture')
  assert sorted(out) == sorted(runs_lib.PLOT_METRICS)
  for metric, info in out.items():
    path = tmp_path / 'out' / 'plots' / f'{metric}.png'
    assert info['path'] == str(path)
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    img = mpimg.imread(str(path))
    assert img.shape[0] >= 300 and img.shape[1] >= 500, img.shape
    assert img.shape[2] in (3, 4)
    assert np.ptp(img[..., :3]) > 0.5  # not a blank image
    assert info['num_lines'] == len(RUNS), metric
    assert info['labels'] == [f'{r["variant"]} ({r["name"]})' for r in runs]


def test_write_report_writes_table_and_plot_links(workdirs, tmp_path):
  out = report.write_report(workdirs, tmp_path / 'rep', title='Table 2')
  text = (tmp_path / 'rep' / 'report.md').read_text()
  assert text.startswith('# Table 2\n')
  assert (FIXTURES / 'expected_table.md').read_text() in text
  for metric in runs_lib.PLOT_METRICS:
    assert f'](plots/{metric}.png)' in text
    assert os.path.exists(out['plots'][metric]['path'])


def test_workdir_without_metrics_is_refused(workdirs, tmp_path):
  empty = tmp_path / 'runs' / 'not_started'
  empty.mkdir()
  (empty / 'config.json').write_text('{"method": "byol"}')
  with pytest.raises(
      ValueError, match=r'metrics\.jsonl does not exist.*' r'byol_jax\.main'
  ):
    runs_lib.load_run(str(empty))
  with pytest.raises(ValueError, match='not_started'):
    report.write_report(workdirs + [str(empty)], tmp_path / 'rep')
  assert not (tmp_path / 'rep' / 'report.md').exists()


def test_empty_metrics_file_is_refused(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text('')
  with pytest.raises(ValueError, match='no metric rows'):
    runs_lib.load_run(str(tmp_path))


def test_wall_time_cell(workdirs):
  run = runs_lib.load_run(workdirs[0])
  cells = []
  for wall, exact in ((None, False), (12, True), (754.4, True), (7380, False)):
    run.update(wall_time_s=wall, wall_time_exact=exact)
    cells.append(report.table_row(run)['wall time'])
  assert cells == ['—', '12s', '12m34s', '~2h03m']


@pytest.mark.parametrize(
    'paper_top1,std,cell',
    [
        (73.2, 0.6, 'learns / learns (agree)'),
        (0.1, 0.001, 'collapsed / collapsed (agree)'),
        (5.4, 0.3, 'collapsed / learns (DIFFER)'),  # BYOL LN/LN/-, Table 1
        (0.1, 0.7, 'collapsed / learns (DIFFER)'),
        (None, 0.7, '— / learns'),  # a cell the paper did not run
        (62.6, None, 'learns / —'),
    ],
)
def test_collapse_cell(paper_top1, std, cell):
  run = {'paper_top1': paper_top1, 'final': {'collapse_std_projection': std}}
  assert report.collapse_cell(run) == cell
