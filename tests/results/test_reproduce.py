"""byol_jax/results/reproduce.py and variants.py: the table grids, commands,
errors and resumption.

The tiny-scale acceptance run (no normalisation collapses, BN and GN+WS do
not) is tests/results/test_tiny_scale.py.
"""

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from byol_jax.config import plan
from byol_jax.results import reproduce
from byol_jax.results import variants

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / 'tests' / 'fixtures' / 'report'


def test_table_grids():
  t2 = variants.table_variants(2)
  assert [(v.name, v.config) for v in t2] == [
      ('bn', 'byol_bn'),
      ('no_norm', 'no_bn'),
      ('modified_init', 'modified_init'),
      ('gn_ws', 'gn_ws'),
  ]
  t1 = variants.table_variants(1)
  # BN / LN / none for each of BYOL's three components, and for SimCLR's two
  # (it has no predictor): 27 + 9 cells, all distinct.
  assert len(t1) == 27 + 9 == len({v.name for v in t1})
  assert sum(v.name.startswith('simclr_') for v in t1) == 9
  assert all(v.config == 'ablation' for v in t1)
  with pytest.raises(ValueError, match='--table=3'):
    variants.table_variants(3)


@pytest.mark.parametrize('scale', ['tiny', 'cifar10'])
def test_every_table2_variant_is_the_normal_config(scale):
  for v in variants.table_variants(2):
    config = variants.variant_config(
        v, scale, 'digits' if scale == 'tiny' else 'tfds:cifar10'
    )
    assert (
        config.paper_top1
        == {'bn': 74.3, 'no_norm': 0.1, 'modified_init': 65.7, 'gn_ws': 73.9}[
            v.name
        ]
    )
    if scale == 'cifar10':
      assert (
          config.model.depth,
          config.model.stem,
          config.data.image_size,
      ) == (18, 'small', 32)
      built = plan.build(config, topology=plan.Topology(1, 1), read_data=False)
      # floor(epochs * examples / batch), the official formula.
      assert built.pretrain.total_steps == 200 * 50_000 // 512 == 19_531
    else:
      assert config.model.depth == 10 and config.data.image_size == 16
  # The variant's own hyper-parameters survive the scale preset; tau is the
  # scale's (it depends on the run length).
  gn = variants.variant_config(variants.Variant('gn_ws', 'gn_ws'), 'cifar10')
  assert (gn.training.base_learning_rate, gn.training.weight_decay) == (
      0.24,
      3e-8,
  )
  assert gn.model.encoder_ws and gn.model.encoder_norm == 'gn'


def test_table1_cells_set_norms_and_method():
  cells = {v.name: v for v in variants.table_variants(1)}
  config = variants.variant_config(
      cells['byol_enc-bn_proj-ln_pred-none'], 'tiny'
  )
  assert (
      config.method,
      config.model.encoder_norm,
      config.model.projector_norm,
      config.model.predictor_norm,
  ) == ('byol', 'bn', 'ln', 'none')
  config = variants.variant_config(cells['simclr_enc-none_proj-bn'], 'tiny')
  assert (
      config.method,
      config.model.encoder_norm,
      config.model.projector_norm,
  ) == ('simclr', 'none', 'bn')


def test_dry_run_prints_the_main_commands(tmp_path):
  out = subprocess.run(
      [
          sys.executable,
          '-m',
          'byol_jax.reproduce',
          '--table=2',
          '--scale=tiny',
          f'--workdir={tmp_path}',
          '--variants=gn_ws,bn',
          '--dry_run',
          '--override=training.total_steps=40',
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  # Table order, not the order asked for.
  assert lines == [
      f'python -m byol_jax.main --config=experiments/byol_bn.py:tiny '
      f'--workdir={tmp_path}/bn --config.training.total_steps=40',
      f'python -m byol_jax.main --config=experiments/gn_ws.py:tiny '
      f'--workdir={tmp_path}/gn_ws --config.training.total_steps=40',
  ]
  assert not any(tmp_path.iterdir())  # a dry run writes nothing.


@pytest.mark.parametrize(
    'args, message',
    [
        (['--variants=bogus'], 'bogus not in this table'),
        (['--override=training.total_steps'], 'use field=value'),
        (['--override=training.total_steps=many'], 'expected a int'),
        (['--scale=imagenet'], 'imagenet'),
    ],
)
def test_bad_arguments_exit_nonzero_naming_them(tmp_path, args, message):
  out = subprocess.run(
      [
          sys.executable,
          '-m',
          'byol_jax.reproduce',
          '--table=2',
          f'--workdir={tmp_path}',
          '--dry_run',
      ]
      + args,
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert out.returncode != 0
  assert message in out.stderr


def _fake_done_run(root, name, fixture):
  shutil.copytree(FIXTURES / fixture, root / name)
  # Run under the inputs reproduce asks for (a run of others is rerun).
  (variant,) = [v for v in variants.table_variants(2) if v.name == name]
  (root / name / 'config.json').write_text(
      variants.variant_config(variant, 'tiny').to_json_best_effort()
  )
  (root / name / 'eval_results.json').write_text(
      json.dumps({'top1': 0.5, 'top5': 0.9, 'knn_top1': 0.4})
  )


def test_finished_variants_are_skipped_and_reported(tmp_path, monkeypatch):
  """A rerun skips variants that have eval_results.json (resumption) and
  still writes the table and plots from every variant's workdir."""
  for name, fixture in (
      ('bn', 'bn'),
      ('no_norm', 'nonorm'),
      ('gn_ws', 'gn_ws'),
  ):
    _fake_done_run(tmp_path, name, fixture)
  ran = []
  monkeypatch.setattr(
      reproduce, 'run_variant', lambda v, config, workdir: ran.append(v.name)
  )
  out = reproduce.reproduce(
      2, 'tiny', tmp_path, variants=['bn', 'no_norm', 'gn_ws']
  )
  assert ran == [] and out['skipped'] == ['bn', 'no_norm', 'gn_ws']
  table = (tmp_path / 'table2.md').read_text()
  assert table.startswith('# Paper Table 2, scale tiny')
  assert table.count('\n| ') == 4  # header + 3 variants
  for metric in ('loss', 'collapse_std_projection', 'online_top1'):
    info = out['report']['plots'][metric]
    assert info['num_lines'] == 3
    assert (tmp_path / 'plots' / f'{metric}.png').stat().st_size > 1000


def test_unfinished_variant_runs_and_failures_are_recorded(
    tmp_path, monkeypatch
):
  _fake_done_run(tmp_path, 'bn', 'bn')

  def fake_run(variant, config, workdir):
    if variant.name == 'no_norm':
      raise RuntimeError('loss became nan at step 7')
    _fake_done_run(tmp_path, variant.name, 'gn_ws')

  monkeypatch.setattr(reproduce, 'run_variant', fake_run)
  out = reproduce.reproduce(2, 'tiny', tmp_path)
  assert out['skipped'] == ['bn'] and out['ran'] == ['modified_init', 'gn_ws']
  assert out['failed'] == {'no_norm': 'RuntimeError: loss became nan at step 7'}
  failures = json.loads((tmp_path / 'failures.json').read_text())
  assert failures == out['failed']
  table = (tmp_path / 'table2.md').read_text()
  assert 'Failed: no_norm: RuntimeError: loss became nan at step 7' in table
  assert 'Not run yet: no_norm.' in table
  # The rerun retries only the failed variant; once it succeeds, its failure
  # record goes away.
  ran = []
  monkeypatch.setattr(
      reproduce,
      'run_variant',
      lambda v, c, w: (
          ran.append(v.name),
          _fake_done_run(tmp_path, v.name, 'nonorm'),
      ),
  )
  reproduce.reproduce(2, 'tiny', tmp_path)
  assert ran == ['no_norm']
  assert not (tmp_path / 'failures.json').exists()
  assert 'Failed' not in (tmp_path / 'table2.md').read_text()
