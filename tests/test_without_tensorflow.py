"""Pre-training and linear evaluation on a machine without TensorFlow.

Each test runs `python -m byol_jax.main` in a subprocess that makes
TensorFlow and TFDS unimportable (sys.modules[...] = None) before anything
is imported, on 2 fake CPU devices: a tiny GN+WS run (4 steps, the kNN
monitor at step 2) followed by linear evaluation with the augmented probe,
all on the in-memory path (data decoded once, cropped on the devices).
"""

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import xla_env  # tests/xla_env.py

REPO = pathlib.Path(__file__).resolve().parents[1]
_PRELUDE = (
    'import sys\n'
    "sys.modules['tensorflow'] = None\n"
    "sys.modules['tensorflow_datasets'] = None\n"
    'import runpy\n'
    'import byol_jax\n'
    "runpy.run_module('byol_jax.main', run_name='__main__')\n"
)


def _run_without_tf(dataset, workdir, *extra):
  args = [
      f'--config=experiments/gn_ws.py:tiny,batch=32,steps=4,'
      f'dataset={dataset}',
      f'--workdir={workdir}',
      '--config.training.warmup_steps=1',
      '--config.logging.every_steps=1',
      '--config.logging.knn_every_steps=2',
      '--config.eval.num_epochs=1',
      '--config.eval.global_batch_size=32',
      '--config.eval.augment=true',
      *extra,
  ]
  env = xla_env.subprocess_env(2, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, '-c', _PRELUDE, *args],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stderr


def _check_run(workdir, log, *, num_train, num_test):
  if importlib.util.find_spec('tensorboard') is not None:
    # TensorBoard events are written by the tensorboard package, without TF.
    assert 'TensorBoard logging disabled' not in log
    assert list(workdir.glob('events.out.tfevents.*'))
  else:
    assert 'TensorBoard logging disabled: the tensorboard package' in log
  assert 'MiB on each of 2 device(s) (cpu)' in log  # the data's size
  config = json.loads((workdir / 'config.json').read_text())
  assert config['derived']['data_path'] == 'in_memory'
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').open()]
  losses = [r for r in rows if 'loss' in r]
  assert [r['step'] for r in losses] == [1, 2, 3, 4]
  assert all(np.isfinite(r['loss']) for r in losses)
  knn = [r['knn_top1'] for r in rows if 'knn_top1' in r]
  assert len(knn) == 2 and all(0.0 <= k <= 1.0 for k in knn)
  results = json.loads((workdir / 'eval_results.json').read_text())
  assert (results['num_train'], results['num_test']) == (num_train, num_test)
  assert results['augment'] is True and results['checkpoint_step'] == 4
  for key in ('top1', 'top5', 'knn_top1'):
    assert 0.0 <= results[key] <= 1.0
  assert results['top5'] >= results['top1']


@pytest.mark.parametrize(
    'dataset,num_train,num_test',
    [('synthetic:16', 1024, 256), ('digits', 1500, 297)],
)
def test_bundled_data_trains_and_evaluates_without_tensorflow(
    tmp_path, dataset, num_train, num_test
):
  workdir = tmp_path / 'run'
  log = _run_without_tf(dataset, workdir)
  _check_run(workdir, log, num_train=num_train, num_test=num_test)


def test_image_folder_trains_and_evaluates_without_tensorflow(
    tmp_path, cifar10_jpg_dir
):
  """A CIFAR-10 JPEG subset: 20 train and 10 test images per class."""
  root = tmp_path / 'cifar_subset'
  for split, n in (('train', 20), ('test', 10)):
    for cls in sorted(os.listdir(cifar10_jpg_dir / split)):
      (root / split / cls).mkdir(parents=True)
      for name in sorted(os.listdir(cifar10_jpg_dir / split / cls))[:n]:
        shutil.copy(
            cifar10_jpg_dir / split / cls / name, root / split / cls / name
        )
  (root / 'train' / 'cat' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0junk')
  workdir, cache = tmp_path / 'run', tmp_path / 'cache'
  log = _run_without_tf(
      f'folder:{root}', workdir, f'--config.data.cache_dir={cache}'
  )
  _check_run(workdir, log, num_train=200, num_test=100)
  assert (
      "split 'train': 200 of 201 files held in memory as 32x32 uint8" in log
      and '1 skipped (not decodable JPEG/PNG)' in log
  )
  [entry] = os.listdir(cache)
  assert entry.startswith('cifar_subset-0-')
