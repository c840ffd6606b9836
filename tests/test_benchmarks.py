"""benchmarks/throughput.py, benchmarks/flops.py, benchmarks/input_pipeline.py.

The tiny benchmark run writes into tmp_path (never benchmarks/results/), in
a child process as the command does; it inherits conftest's 8 fake CPU
devices, of which it pmaps over 2 so the global-batch arithmetic is checked.
"""

import json
import math

import pytest

from benchmarks import flops
from benchmarks import input_pipeline
from benchmarks import throughput

TINY = [
    '--depth',
    '10',
    '--width',
    '0.25',
    '--image_size',
    '16',
    '--per_device_batch',
    '4',
    '--num_devices',
    '2',
    '--steps',
    '3',
    '--warmup',
    '1',
    '--norm',
    'bn',
    '--no_flop_check',
]

ROW_NUMBERS = (
    'images_per_sec',
    'step_time_median_s',
    'step_time_p10_s',
    'step_time_p90_s',
    'lower_time_s',
    'compile_time_s',
    'peak_memory_bytes',
    'compiled_memory_bytes',
    'flops_per_step',
    'flops_per_image',
    'analytic_flops_per_image',
    'flops_vs_analytic_ratio',
    'tflops_per_sec',
)


def test_tiny_run_writes_a_consistent_results_file(tmp_path):
  result = throughput.main(TINY + ['--out', str(tmp_path)])
  files = list(tmp_path.glob('throughput-cpu-*-x2-*.json'))
  assert len(files) == 1, list(tmp_path.iterdir())
  written = json.loads(files[0].read_text())
  assert written == json.loads(json.dumps(result))
  for field in ('device', 'date', 'command', 'jax_version', 'platform'):
    assert written[field], field
  assert written['command'].startswith('python -m benchmarks.throughput ')
  assert '--num_devices 2' in written['command']
  assert written['platform'] == 'cpu' and written['num_devices'] == 2
  assert written['flop_check'] is None  # --no_flop_check
  (row,) = written['rows']
  assert (
      row['method'],
      row['norm'],
      row['depth'],
      row['image_size'],
      row['dtype'],
  ) == ('byol', 'bn', 10, 16, 'float32')
  assert row['per_device_batch'] == 4 and row['global_batch'] == 8
  for field in ROW_NUMBERS:
    value = row[field]
    assert isinstance(value, (int, float)) and math.isfinite(value), field
    assert value > 0, field
  assert row['step_time_p10_s'] <= row['step_time_median_s']
  assert row['step_time_median_s'] <= row['step_time_p90_s']
  assert row['lower_time_s'] < row['compile_time_s']
  assert row['images_per_sec'] == pytest.approx(
      row['global_batch'] / row['step_time_median_s'], rel=1e-9
  )
  assert row['flops_per_image'] == pytest.approx(
      row['flops_per_step'] / row['global_batch'], rel=1e-9
  )
  assert row['tflops_per_sec'] == pytest.approx(
      row['flops_per_step'] / row['step_time_median_s'] / 1e12, rel=1e-9
  )
  # The encoder and heads are nearly all of the step's arithmetic.
  assert 0.8 < row['flops_vs_analytic_ratio'] < 1.2
  # No defensible CPU peak: no MFU, and the file says why.
  assert row['mfu'] is None and 'CPU' in row['mfu_note']
  assert row['peak_memory_kind'].startswith('host_rss_peak')
  assert row['persistent_compilation_cache'] is False  # a real compile.
  assert math.isfinite(row['loss_last_step'])


def test_resnet50_byol_flops_match_the_analytic_count():
  """Acceptance: XLA's count is within 10% of the analytic 65.8 GFLOP."""
  check = throughput.flop_check()
  assert check['flops_vs_issue_ratio'] == pytest.approx(1.0, abs=0.1)
  # The analytic rule reproduces the round 65.8 GFLOP from the architecture.
  assert check['analytic_flops_per_image'] == pytest.approx(65.8e9, rel=0.01)
  # ResNet-50 forward at 224 px: the often quoted 4.1 G multiply-adds.
  assert flops.encoder_macs(50, 1.0, 'imagenet', 224) == pytest.approx(
      4.1e9, rel=0.01
  )


def test_analytic_count_follows_the_method():
  spec = dict(throughput.DEFAULT_SPEC, depth=10, width=0.25, image_size=16)
  config = throughput.make_run(spec, 1).config
  byol = flops.analytic_flops_per_image(config)
  simclr = flops.analytic_flops_per_image(
      throughput.make_run(dict(spec, method='simclr'), 1).config
  )
  # Per view, SimCLR trains encoder + projector (3 passes); BYOL adds their
  # target forward (1 pass) and the trained predictor (3 passes); 2 views,
  # 2 FLOP per multiply-add.
  m = config.model
  predictor = 2 * m.projector_output_size * m.predictor_hidden_size
  assert byol == pytest.approx(
      simclr * 4 / 3 + 2 * 2 * 3 * predictor, rel=1e-12
  )


@pytest.mark.parametrize(
    'kind,dtype,peak',
    [
        ('NVIDIA H100 80GB HBM3', 'bfloat16', 989.4e12),
        ('NVIDIA H100 80GB HBM3', 'float32', 494.7e12),
        ('NVIDIA H100 PCIe', 'bfloat16', 756e12),
        ('NVIDIA H200', 'bfloat16', 989.4e12),
        ('NVIDIA A100-SXM4-40GB', 'bfloat16', 312e12),
        ('TPU v3', 'bfloat16', 61.5e12),
        ('TPU v5 lite', 'bfloat16', 197e12),
        ('TPU v5', 'bfloat16', 459e12),
        ('cpu', 'float32', None),
    ],
)
def test_peak_flops_table(kind, dtype, peak):
  assert flops.peak_flops(kind, dtype)[0] == peak


def test_bad_config_fails_before_compiling(tmp_path):
  with pytest.raises(ValueError, match='encoder_norm'):
    throughput.main(
        TINY + ['--encoder_norm', 'batchnorm', '--out', str(tmp_path)]
    )
  with pytest.raises(ValueError, match='norm=.bn_ws.'):
    throughput.main(TINY[:-3] + ['--norm', 'bn_ws', '--out', str(tmp_path)])
  assert not list(tmp_path.iterdir())


def test_probe_sweep_reports_both_timings_and_their_ratios():
  from benchmarks import probe_sweep  # pylint: disable=g-import-not-at-top

  r = probe_sweep.main(
      [
          '--num_examples',
          '512',
          '--dim',
          '16',
          '--classes',
          '5',
          '--batch',
          '128',
          '--steps',
          '4',
          '--repeats',
          '2',
          '--no_write',
      ]
  )
  assert r['grid'] == [0.4, 0.3, 0.2, 0.1, 0.05]
  assert len(r['one_probe_times_s']) == len(r['sweep_times_s']) == 2
  assert r['one_probe_s'] > 0 and r['sweep_s'] > 0
  assert r['sweep_over_one'] == pytest.approx(
      r['sweep_s'] / r['one_probe_s'], rel=1e-2
  )
  assert r['protocol_over_one'] == pytest.approx(
      r['sweep_over_one'] + 1, abs=2e-3
  )


@pytest.mark.parametrize(
    'argv,message',
    [
        (
            ['--per-device-batch', '8'],
            "Unknown command line flag 'per-device-batch'",
        ),
        (['--per_device_batch=8,x'], 'flag --per_device_batch=8,x'),
        (['--dtype=float16'], "--dtype 'float16': use float32 or bfloat16"),
        (['--steps=0'], '--steps must be >= 1'),
        (['--encoder_ws', 'true'], "unexpected argument(s) 'true'"),
    ],
)
def test_bad_command_line_is_one_line_and_exit_code_2(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    throughput.parse_args(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith('Usage error: ') and err.count('\n') == 1, err
  assert message in err, err


def test_command_line_lists_booleans_and_fresh_values():
  args = throughput.parse_args(
      [
          '--per_device_batch=8,,16',
          '--noencoder_ws',
          '--norm',
          'bn',
          '--no_isolate',
      ]
  )
  assert args.per_device_batch == [8, 16] and args.no_isolate
  specs = throughput.row_specs(args)
  assert [s['per_device_batch'] for s in specs] == [8, 16]
  assert specs[0]['overrides'] == {'encoder_ws': False}
  # Each parse starts from the defaults (a fresh FlagValues).
  again = throughput.parse_args([])
  assert again.per_device_batch == [32] and again.norm == ['bn', 'gn_ws']
  assert again.encoder_ws is None and not again.no_isolate


def test_command_exits_2_on_a_bad_flag():
  """The absl.app path (python -m) as the device suite's children run it."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.torch_reference', '--compile=maybe'],
      cwd=throughput._results.REPO,
      capture_output=True,
      text=True,
      check=False,
      timeout=120,
  )
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      'Usage error: flag --compile=maybe: value should be one of '
      '<auto|on|off>'
  ], proc.stderr


def _cifar_like_tarball(path, top=''):
  """A .tar.gz of train/<class>/*.jpg and test/... (32 px noise JPEGs)."""
  import io  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top
  import PIL.Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  with tarfile.open(path, 'w:gz') as tar:
    for split, n in (('train', 8), ('test', 4)):
      for label in ('cat', 'dog'):
        for i in range(n):
          buf = io.BytesIO()
          PIL.Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(
              buf, format='JPEG'
          )
          info = tarfile.TarInfo(f'{top}{split}/{label}/{i:04d}.jpg')
          info.size = len(buf.getvalue())
          buf.seek(0)
          tar.addfile(info, buf)
  return path


@pytest.mark.parametrize('top', ['', 'cifar10-jpg/'])
def test_input_pipeline_unpacks_a_cifar_tarball_once(tmp_path, top):
  tarball = _cifar_like_tarball(tmp_path / 'c.tar.gz', top)
  folder = input_pipeline.cifar_folder(str(tarball), str(tmp_path / 'unp'))
  (dest,) = (tmp_path / 'unp').iterdir()  # <name>-<key of the tarball>
  assert dest.name.startswith('c-') and (dest / '.complete').exists()
  assert folder == str(dest / top.rstrip('/')).rstrip('/')
  assert len(list(dest.rglob('*.jpg'))) == 24
  # A second call finds the marker and extracts nothing.
  victim = next((tmp_path / 'unp').rglob('*.jpg'))
  victim.unlink()
  assert (
      input_pipeline.cifar_folder(str(tarball), str(tmp_path / 'unp')) == folder
  )
  assert not victim.exists()
  assert input_pipeline.cifar_folder('none') == ''
  assert input_pipeline.cifar_folder(str(tmp_path)) == str(tmp_path)
  with pytest.raises(FileNotFoundError, match='--cifar='):
    input_pipeline.cifar_folder(str(tmp_path / 'missing.tar.gz'))


def test_input_pipeline_measures_a_cifar_tarball_and_names_the_device(tmp_path):
  tarball = _cifar_like_tarball(tmp_path / 'c.tar.gz')
  out = tmp_path / 'out'
  result = input_pipeline.main(
      [
          '--skip_streaming',
          f'--cifar={tarball}',
          f'--unpack_dir={tmp_path / "unp"}',
          f'--cache_dir={tmp_path / "cache"}',
          '--in_memory_batch=8',
          '--in_memory_batch_224=2',
          '--batches=1',
          f'--out={out}',
      ]
  )
  rows = {r['name']: r for r in result['in_memory']}
  assert set(rows) == {
      'cifar10_jpg/in_memory_crop_augment',
      'synthetic_224/in_memory_crop_augment',
  }
  cifar = rows['cifar10_jpg/in_memory_crop_augment']
  assert cifar['image_size'] == 32 and cifar['batch'] == 8
  for key in ('images_per_sec', 'crop_only_images_per_sec', 'compile_s'):
    assert math.isfinite(cifar[key]) and cifar[key] > 0, key
  assert result['streaming'] == []
  (path,) = out.glob('input_pipeline-cpu-*.json')
  assert json.loads(path.read_text())['in_memory'] == result['in_memory']
