"""Workdir I/O goes through etils.epath, so gs:// workdirs work.

A fake gs:// bucket: etils' mock_epath routes every epath operation on any
path to a function of ours that maps gs://fake-bucket/... onto a local
directory. Code that reached the workdir with os.path or open() instead would
look for a local file named 'gs:/fake-bucket/...' and fail. (orbax writes gs://
through tensorstore, which this cannot mock; checkpointing passes epath paths
to orbax and never touches the files itself.)
"""

import json
import pathlib
import sys

from etils import epath
from etils.epath import gpath as epath_gpath
from etils.epath import testing as epath_testing
import pytest

from byol_jax.results import report
from byol_jax.results import runs as runs_lib
from byol_jax.training import writers

BUCKET = 'gs://fake-bucket'


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """gs://fake-bucket/<p> is tmp_path/bucket/<p>; yields the local root."""
  # With TensorFlow importable, epath sends gs:// straight to tf.io.gfile,
  # around the backend table that mock_epath replaces.
  monkeypatch.setattr(epath_gpath, '_is_tf_installed', lambda: False)
  root = tmp_path / 'bucket'
  root.mkdir()
  used = set()

  def local(path):
    path = str(path)
    if path.startswith(BUCKET):
      used.add(path)
      return str(root) + path[len(BUCKET) :]
    return path

  def one(fn, path, *args, **kwargs):
    return fn(local(path), *args, **kwargs)

  def two(fn, path, dst, *args, **kwargs):
    return fn(local(path), local(dst), *args, **kwargs)

  def glob(fn, pattern):
    return [
        BUCKET + p[len(str(root)) :] if p.startswith(str(root)) else p
        for p in fn(local(pattern))
    ]

  with epath_testing.mock_epath(
      open=one,
      exists=one,
      isdir=one,
      listdir=one,
      makedirs=one,
      mkdir=one,
      remove=one,
      rmtree=one,
      stat=one,
      walk=one,
      glob=glob,
      rename=two,
      replace=two,
      copy=two,
  ):
    yield root, used


def test_metric_writer_and_report_on_a_gs_workdir(fake_gcs, monkeypatch):
  root, used = fake_gcs
  # TensorBoard would reach for the real bucket: as without tensorboard.
  monkeypatch.setitem(sys.modules, 'tensorboard.summary.writer', None)
  workdir = epath.Path(BUCKET) / 'runs' / 'gn_ws'
  writer = writers.MetricWriter(workdir, total_steps=4, images_per_step=1)
  for step in range(1, 5):
    writer.write(step, {'loss': 1.0 / step, 'collapse_std_projection': 0.5})
  writer.truncate_after(3)  # a resume at step 3
  (workdir / 'config.json').write_text(
      json.dumps(
          {
              'method': 'byol',
              'paper_top1': 73.9,
              'derived': {'total_steps': 4},
              'model': {},
          }
      )
  )
  # The files are in the (fake) bucket, not in a local 'gs:' directory.
  rows = [
      json.loads(l)
      for l in (root / 'runs/gn_ws/metrics.jsonl').read_text().splitlines()
  ]
  assert [r['step'] for r in rows] == [1, 2, 3]
  assert not pathlib.Path('gs:').exists()
  assert writers.read_metrics(workdir) == rows

  out = report.write_report([str(workdir)], f'{BUCKET}/report', title='t')
  assert out['table_path'] == f'{BUCKET}/report/report.md'
  assert (root / 'report/report.md').read_text().startswith('# t\n')
  for metric in runs_lib.PLOT_METRICS:
    png = root / 'report' / 'plots' / f'{metric}.png'
    assert png.read_bytes()[:4] == b'\x89PNG'
  run = out['runs'][0]
  assert run['workdir'] == str(workdir) and run['last_step'] == 3
  assert run['wall_time_exact'] is False and run['wall_time_s'] >= 0
  assert f'{BUCKET}/runs/gn_ws/metrics.jsonl' in used
