"""Tests for byol_jax.data.sources: spec parsing, splits, folders, bad files."""

import io
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from byol_jax.data import sources

CIFAR_CLASSES = (
    'airplane',
    'automobile',
    'bird',
    'cat',
    'deer',
    'dog',
    'frog',
    'horse',
    'ship',
    'truck',
)


def _jpeg_bytes(seed, size=(40, 48)):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
  buf = io.BytesIO()
  PIL.Image.fromarray(image).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def make_bad_folder(root):
  """a/: 3 JPEGs, a truncated JPEG, a text file named .jpg; b/: 2 PNGs."""
  os.makedirs(root / 'a')
  os.makedirs(root / 'b')
  for i in range(3):
    (root / 'a' / f'{i}.jpg').write_bytes(_jpeg_bytes(i))
  full = _jpeg_bytes(99)
  (root / 'a' / 'truncated.jpg').write_bytes(full[: len(full) * 2 // 5])
  (root / 'a' / 'notes.jpg').write_text('this is not an image\n')
  for i in range(2):
    PIL.Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(
        root / 'b' / f'{i}.png'
    )
  return root


def test_digits_source_is_fixed_and_in_range():
  src = sources.get_source('digits')
  assert src.num_classes == 10
  assert src.num_examples('train') == 1500
  assert src.num_examples('test') == 297
  assert src.num_examples('pretrain') == 1500  # logical -> train
  assert src.resolve_split('test') == 'test'
  x = src.images['train']
  assert x.shape == (1500, 8, 8, 3) and x.dtype == np.float32
  assert x.min() == 0.0 and x.max() == 1.0
  np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grey as RGB
  again = sources.get_source('digits')
  np.testing.assert_array_equal(again.labels['test'], src.labels['test'])
  assert set(np.unique(src.labels['test'])) == set(range(10))


def test_synthetic_source_and_bad_spec():
  src = sources.get_source('synthetic:16')
  assert src.images['train'].shape == (1024, 16, 16, 3)
  assert src.images['train'].dtype == np.uint8
  with pytest.raises(ValueError, match='dataset spec'):
    sources.get_source('imagenet')
  with pytest.raises(ValueError, match='split'):
    src.resolve_split('validation')


def test_imagenet_protocol_splits():
  gs = sources.generic_split
  assert gs('pretrain', (), 'tfds:imagenet2012') == 'train'
  assert gs('linear_train', (), 'tfds:imagenet2012') == 'train[10000:]'
  assert gs('linear_valid', (), 'tfds:imagenet2012') == 'train[:10000]'
  assert gs('test', (), 'tfds:imagenet2012') == 'validation'
  assert gs('test', ('train', 'test'), 'tfds:cifar10') == 'test'
  assert gs('test', ('train', 'validation'), 'tfds:imagenette') == 'validation'
  with pytest.raises(ValueError, match='linear_valid'):
    gs('linear_valid', ('train', 'test'), 'tfds:cifar10')


def test_cifar10_folder_counts_and_mapping(cifar10_jpg_dir):
  src = sources.get_source(f'folder:{cifar10_jpg_dir}')
  assert src.class_names == CIFAR_CLASSES  # sorted folder names
  assert src.num_classes == 10
  assert src.num_skipped == {'train': 0, 'test': 0}
  np.testing.assert_array_equal(np.bincount(src.labels['train']), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(src.labels['test']), [1000] * 10)
  assert src.resolve_split('test') == 'test'
  for path, label in zip(src.files['train'][::997], src.labels['train'][::997]):
    assert os.path.basename(os.path.dirname(path)) == CIFAR_CLASSES[label]


def test_folder_skips_and_counts_bad_files(tmp_path, caplog):
  root = make_bad_folder(tmp_path / 'data')
  with caplog.at_level(logging.WARNING):
    src = sources.get_source(f'folder:{root}')
  assert src.num_examples('train') == 5
  assert src.num_skipped == {'train': 2}
  names = {os.path.basename(p) for p in src.files['train']}
  assert names == {'0.jpg', '1.jpg', '2.jpg', '0.png', '1.png'}
  assert 'skipped 2 of 7 files' in caplog.text
  np.testing.assert_array_equal(src.labels['train'], [0, 0, 0, 1, 1])


def test_missing_or_empty_folder_errors(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    sources.get_source(f'folder:{tmp_path / "nope"}')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match=str(tmp_path / 'empty')):
    sources.get_source(f'folder:{tmp_path / "empty"}')
  (tmp_path / 'classes' / 'cat').mkdir(parents=True)
  (tmp_path / 'classes' / 'cat' / 'readme.txt').write_text('no images')
  with pytest.raises(ValueError, match='no decodable'):
    sources.get_source(f'folder:{tmp_path / "classes"}')


def test_unprepared_tfds_errors_with_instructions(tmp_path):
  with pytest.raises(ValueError) as err:
    sources.get_source('tfds:imagenet2012', data_dir=str(tmp_path))
  message = str(err.value)
  assert str(tmp_path) in message
  assert 'ILSVRC2012_img_train.tar' in message and 'manual' in message
  with pytest.raises(ValueError, match='tfds build mnist'):
    sources.get_source('tfds:mnist', data_dir=str(tmp_path))


# ------------------------------------------------------------ hold_out
ONE_HOST = dict(process_index=0, process_count=1)


def _has_split(source, split):
  try:
    source.resolve_split(split)
    return True
  except ValueError:
    return False


def _png_folder(root, per_class=(5, 4, 3)):
  """Train-only folder: class c<k>/ holds per_class[k] tiny PNGs."""
  for k, n in enumerate(per_class):
    (root / f'c{k}').mkdir(parents=True)
    for i in range(n):
      PIL.Image.fromarray(np.full((6, 7, 3), 20 * k + i, np.uint8)).save(
          root / f'c{k}' / f'{i}.png'
      )
  return root


def _check_partition(before, after, field):
  """train + held_out of `after` is exactly `before`'s train, disjointly."""
  data, labels = getattr(before, field)['train'], before.labels['train']
  new = getattr(after, field)
  n_train, n_held = len(new['train']), len(new['held_out'])
  assert n_train + n_held == len(data)
  assert len(after.labels['train']) == n_train
  assert len(after.labels['held_out']) == n_held
  # Both parts are in the original order: recover their original indices.
  keys = [x.tobytes() if field == 'images' else x for x in data]
  assert len(set(keys)) == len(keys)  # examples are distinct
  where = {k: i for i, k in enumerate(keys)}
  idx = {
      s: np.asarray(
          [where[x.tobytes() if field == 'images' else x] for x in new[s]]
      )
      for s in ('train', 'held_out')
  }
  assert not set(idx['train']) & set(idx['held_out'])
  np.testing.assert_array_equal(
      np.sort(np.concatenate([idx['train'], idx['held_out']])),
      np.arange(len(data)),
  )
  for s in ('train', 'held_out'):
    assert (np.diff(idx[s]) > 0).all()  # ascending: original order kept
    np.testing.assert_array_equal(after.labels[s], labels[idx[s]])
  return idx


def test_hold_out_digits_partitions_train():
  src = sources.get_source('digits')
  train_before = src.images['train'].copy()
  held = sources.hold_out(src, 200)
  assert type(held) is sources.InMemorySource
  assert held.name == 'digits' and held.num_classes == 10
  assert held.raw_splits() == ('train', 'test', 'held_out')
  assert held.num_examples('train') == 1300
  assert held.num_examples('held_out') == 200
  assert held.num_examples('pretrain') == 1300
  assert held.num_examples('linear_train') == 1300
  idx = _check_partition(src, held, 'images')
  # The selection: a seed-0 permutation's first 200, sorted.
  perm = np.random.default_rng(0).permutation(1500)
  np.testing.assert_array_equal(idx['held_out'], np.sort(perm[:200]))
  # The argument is untouched, test too.
  assert src.raw_splits() == ('train', 'test')
  np.testing.assert_array_equal(src.images['train'], train_before)
  assert held.images['test'] is src.images['test']
  # Digits has a test split: 'test' stays 'test'; 'linear_valid' is held_out.
  assert held.resolve_split('test') == 'test'
  assert held.resolve_split('linear_valid') == 'held_out'
  assert held.resolve_split('pretrain') == 'train'


def test_hold_out_is_deterministic():
  a = sources.hold_out(sources.get_source('digits'), 97)
  b = sources.hold_out(sources.get_source('digits'), 97)
  np.testing.assert_array_equal(a.images['held_out'], b.images['held_out'])
  np.testing.assert_array_equal(a.labels['held_out'], b.labels['held_out'])
  np.testing.assert_array_equal(a.images['train'], b.images['train'])
  # Independent of numpy's global state and of any run seed.
  np.random.seed(123)
  c = sources.hold_out(sources.get_source('digits'), 97)
  np.testing.assert_array_equal(a.labels['held_out'], c.labels['held_out'])
  assert len(np.unique(a.labels['held_out'])) == 10  # random, not the first


def test_hold_out_folder_partitions_and_maps_test(tmp_path):
  root = _png_folder(tmp_path / 'pets')
  src = sources.get_source(f'folder:{root}')
  assert src.raw_splits() == ('train',)
  with pytest.raises(ValueError) as err:
    src.resolve_split('test')
  assert "['train']" in str(err.value)  # lists the splits it has
  assert '--config.data.held_out_examples=N' in str(err.value)
  with pytest.raises(ValueError, match='held_out_examples=N'):
    src.resolve_split('held_out')

  held = sources.hold_out(src, 4)
  assert type(held) is sources.FolderSource
  assert held.name == f'folder:{root}' == src.name
  assert held.class_names == ('c0', 'c1', 'c2')
  assert held.num_examples('train') == 8
  assert held.num_examples('held_out') == 4
  assert held.num_skipped == {'train': 0, 'held_out': 0}
  assert src.num_skipped == {'train': 0} and src.raw_splits() == ('train',)
  idx = _check_partition(src, held, 'files')
  np.testing.assert_array_equal(
      idx['held_out'], np.sort(np.random.default_rng(0).permutation(12)[:4])
  )
  for s in ('train', 'held_out'):  # still sorted by class, then path
    assert list(held.files[s]) == sorted(held.files[s])
    for path, label in zip(held.files[s], held.labels[s]):
      assert os.path.basename(os.path.dirname(path)) == f'c{label}'
  # Train-only folder: both 'test' and 'linear_valid' report on held_out.
  assert held.resolve_split('test') == 'held_out'
  assert held.resolve_split('linear_valid') == 'held_out'
  assert held.resolve_split('pretrain') == 'train'
  assert held.resolve_split('linear_train') == 'train'
  assert held.num_examples('test') == 4
  assert _has_split(held, 'test') and not _has_split(src, 'test')


def test_hold_out_folder_with_test_keeps_test(tmp_path):
  for split, per_class in (('train', (6, 6)), ('test', (2, 2))):
    _png_folder(tmp_path / 'd' / split, per_class)
  src = sources.get_source(f'folder:{tmp_path / "d"}')
  with pytest.raises(ValueError, match='held_out_examples=N'):
    src.resolve_split('linear_valid')
  held = sources.hold_out(src, 3)
  assert held.num_examples('train') == 9
  assert held.resolve_split('test') == 'test'
  assert held.num_examples('test') == 4
  assert held.resolve_split('linear_valid') == 'held_out'
  assert held.num_examples('linear_valid') == 3


def test_logical_mapping_with_held_out():
  gs = sources.generic_split
  assert gs('test', ('train', 'held_out'), 'x') == 'held_out'
  assert gs('test', ('train', 'test', 'held_out'), 'x') == 'test'
  assert gs('test', ('train', 'validation', 'held_out'), 'x') == 'validation'
  assert gs('test', ('train', 'val', 'held_out'), 'x') == 'val'
  assert gs('linear_valid', ('train', 'held_out'), 'x') == 'held_out'
  assert (
      gs('linear_valid', ('train', 'validation', 'test', 'held_out'), 'x')
      == 'held_out'
  )
  assert (
      gs('linear_valid', ('train', 'validation', 'test'), 'x') == 'validation'
  )  # unchanged without a held-out split
  for logical in ('pretrain', 'linear_train'):
    assert gs(logical, ('train', 'held_out'), 'x') == 'train'
  with pytest.raises(ValueError) as err:
    gs('linear_valid', ('train', 'test'), 'tfds:cifar10')
  message = str(err.value)
  assert 'tfds:cifar10' in message and "'linear_valid'" in message
  assert "['test', 'train']" in message
  assert 'hold out part of train with --config.data.held_out_examples=N' in (
      message
  )


def test_hold_out_errors(tmp_path):
  src = sources.get_source('digits')
  for bad in (0, -3, 1500, 1501, 2.5, True):
    with pytest.raises(ValueError, match=rf'num_examples={bad!r} .*1 to 1499'):
      sources.hold_out(src, bad)
  assert sources.hold_out(src, 1499).num_examples('train') == 1
  assert sources.hold_out(src, np.int64(1)).num_examples('held_out') == 1
  with pytest.raises(ValueError, match="already has a 'held_out' split"):
    sources.hold_out(sources.hold_out(src, 10), 10)
  folder = sources.get_source(f'folder:{_png_folder(tmp_path / "f")}')
  with pytest.raises(ValueError, match='num_examples=12 .*12 training'):
    sources.hold_out(folder, 12)
  no_train = sources.InMemorySource(
      'x', 2, {'test': src.images['test']}, {'test': src.labels['test']}
  )
  with pytest.raises(ValueError, match='no train split'):
    sources.hold_out(no_train, 5)


def test_hold_out_tfds_cifar10_splits(tfds_data_dir):
  # tfds:cifar10 prepared with train (24) and test (12), as the real one's.
  src = sources.get_source('tfds:cifar10', data_dir=tfds_data_dir)
  assert type(src) is sources.TfdsSource and src.held_out_examples == 0
  assert src.num_classes == 10 and src.raw_splits() == ('train', 'test')
  assert src.resolve_split('train') == 'train'
  assert src.resolve_split('pretrain') == 'train'
  assert src.resolve_split('test') == 'test'
  assert (src.num_examples('train'), src.num_examples('test')) == (24, 12)
  for split in ('held_out', 'linear_valid'):  # no validation split either
    with pytest.raises(ValueError, match='held_out_examples=N'):
      src.resolve_split(split)
  held = sources.hold_out(src, 7)
  assert held.name == 'tfds:cifar10' and held.held_out_examples == 7
  assert src.held_out_examples == 0  # not mutated
  assert held.raw_splits() == ('train', 'test', 'held_out')
  assert held.resolve_split('held_out') == 'train[:7]'
  assert held.resolve_split('train') == 'train[7:]'
  assert held.resolve_split('pretrain') == 'train[7:]'
  assert held.resolve_split('linear_train') == 'train[7:]'
  assert held.resolve_split('linear_valid') == 'train[:7]'
  assert held.resolve_split('test') == 'test'  # cifar10 has test
  assert held.resolve_split('train[7:]') == 'train[7:]'  # idempotent
  assert _has_split(held, 'held_out')
  # The sizes TFDS's slices read.
  assert held.num_examples('held_out') == 7
  assert held.num_examples('linear_valid') == 7
  assert held.num_examples('train') == held.num_examples('pretrain') == 17
  assert held.num_examples('test') == 12
  for bad in (0, 24):
    with pytest.raises(ValueError, match=f'num_examples={bad} .*1 to 23'):
      sources.hold_out(src, bad)
  with pytest.raises(ValueError, match="already has a 'held_out'"):
    sources.hold_out(held, 3)
  imagenet = sources.get_source('tfds:imagenet2012', data_dir=tfds_data_dir)
  assert imagenet.resolve_split('pretrain') == 'train'
  assert imagenet.resolve_split('linear_valid') == 'train[:10000]'
  assert imagenet.resolve_split('test') == 'validation'
  assert imagenet.num_examples('test') == 8
  with pytest.raises(ValueError, match=r'train\[:10000\] as linear_valid'):
    sources.hold_out(imagenet, 100)
  # Only prepared datasets open (TFDS cannot download them at start-up).
  with pytest.raises(
      ValueError,
      match=r'tfds:mnist is not prepared in .*' 'run `tfds build mnist',
  ):
    sources.get_source('tfds:mnist', data_dir=tfds_data_dir)


def _tiny_plan(dataset, *overrides, read_data=True):
  from byol_jax.config import configs  # pylint: disable=g-import-not-at-top
  from byol_jax.config import plan  # pylint: disable=g-import-not-at-top

  config = configs.experiment_config(f'tiny,dataset={dataset}')
  for field, value in overrides:
    section, name = field.split('.')
    config[section][name] = value
  return plan.build(config, topology=plan.Topology(1, 1), read_data=read_data)


def test_small_tfds_datasets_are_held_in_memory(monkeypatch, tfds_data_dir):
  tfds = pytest.importorskip('tensorflow_datasets')
  from byol_jax.config import plan  # pylint: disable=g-import-not-at-top

  data_dir = ('data.data_dir', tfds_data_dir)
  run = _tiny_plan('tfds:cifar10', data_dir)
  assert type(run.source) is sources.InMemorySource
  assert run.source.name == 'tfds:cifar10'
  assert run.source.raw_splits() == ('train', 'test')
  builder = tfds.builder('cifar10', data_dir=tfds_data_dir)
  for split, n in (('train', 24), ('test', 12)):
    assert run.source.images[split].shape == (n, 32, 32, 3)
    assert run.source.images[split].dtype == np.uint8
    assert run.source.labels[split].max() < 10
    # TFDS's examples in file order, decoded.
    ds = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
    expected = list(ds)
    np.testing.assert_array_equal(
        run.source.images[split], np.stack([ex['image'] for ex in expected])
    )
    np.testing.assert_array_equal(
        run.source.labels[split], [ex['label'] for ex in expected]
    )
  d = run.data
  assert d.path == 'in_memory' and run.pretrain.num_train_examples == 24
  assert d.in_memory_mb == round((24 + 12) * 32 * 32 * 3 / 2**20, 1)
  streamed = _tiny_plan('tfds:cifar10', data_dir, ('data.max_in_memory_mb', 0))
  assert type(streamed.source) is sources.TfdsSource
  assert streamed.data.path == 'streaming'
  assert streamed.pretrain.num_train_examples == 24
  # Without reading (dry run): from the catalogue's sizes and image shape.
  dry = _tiny_plan('tfds:cifar10', read_data=False).data
  assert (dry.path, dry.in_memory_mb) == ('in_memory', 175.8)
  dry = _tiny_plan('tfds:imagenet2012', read_data=False).data
  assert dry.path == 'streaming'
  monkeypatch.setattr(sources, 'tensorflow_importable', lambda: False)
  with pytest.raises(
      plan.ConfigError,
      match=r"^data.source='tfds:cifar10': "
      'TFDS datasets need TensorFlow, which is not importable',
  ):
    _tiny_plan('tfds:cifar10', read_data=False)


def test_hold_out_tfds_prepared_slices_sizes(tfds_data_dir):
  # A prepared TFDS dataset with a train split (30 examples) only.
  src = sources.get_source(
      'tfds:byol_jax_held_out_images', data_dir=tfds_data_dir
  )
  assert src.raw_splits() == ('train',)
  with pytest.raises(ValueError, match='held_out_examples=N'):
    src.resolve_split('test')
  held = sources.hold_out(src, 8)
  assert held.raw_splits() == ('train', 'held_out')
  assert held.resolve_split('test') == 'train[:8]'
  assert held.num_examples('test') == 8
  assert held.num_examples('held_out') == 8
  assert held.num_examples('pretrain') == 22
  assert held.num_examples('train') == 22
  with pytest.raises(ValueError, match='1 to 29'):
    sources.hold_out(src, 30)
  from byol_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  batches = list(
      pipeline.make_eval_iterator(
          held,
          split='test',
          global_batch_size=6,
          image_size=8,
          local_device_count=1,
          **ONE_HOST,
      )
  )
  mask = np.concatenate([b['mask'].ravel() for b in batches])
  assert len(batches) == 2 and mask.sum() == 8
  # Together, train[8:] and train[:8] are the whole of TFDS's train.
  seen = []
  for split in ('held_out', 'train'):
    ds = held.builder.as_dataset(split=held.resolve_split(split))
    seen.append(sorted(int(ex['image'][0, 0, 0]) // 5 for ex in ds))
  assert seen[0] == sorted(set(seen[0])) and len(seen[0]) == 8
  assert sorted(seen[0] + seen[1]) == list(range(30))
  # In memory through tfds.as_numpy: the same slices. The images' declared
  # shape is (None, None, 3): they need a side to be held.
  assert sources.decoded_bytes(held) is None
  assert sources.decoded_bytes(held, 4) == 30 * 4 * 4 * 3
  mem = sources.in_memory_tfds(held, side=4)
  assert mem.images['held_out'].shape == (8, 4, 4, 3)
  assert mem.images['train'].shape == (22, 4, 4, 3)
  ids = {
      k: np.round(mem.images[k][:, 2, 1, 2] / 5).astype(int) for k in mem.images
  }
  assert sorted(ids['held_out']) == seen[0]  # TFDS's train[:8], as above
  assert sorted(np.concatenate(list(ids.values()))) == list(range(30))
  for split in mem.images:
    np.testing.assert_array_equal(mem.labels[split], ids[split] % 3)
  assert mem.resolve_split('test') == 'held_out'


def test_eval_iterator_reads_exactly_the_held_out_examples(tmp_path):
  from byol_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  digits = sources.hold_out(sources.get_source('digits'), 37)
  folder = sources.hold_out(
      sources.get_source(f'folder:{_png_folder(tmp_path / "f", (9, 8, 7))}'), 5
  )
  for src, split, n, size in (
      (digits, 'held_out', 37, 8),
      (digits, 'linear_valid', 37, 8),
      (folder, 'test', 5, 6),
      (folder, 'held_out', 5, 6),
  ):
    batches = list(
        pipeline.make_eval_iterator(
            src,
            split=split,
            global_batch_size=16,
            image_size=size,
            local_device_count=2,
            **ONE_HOST,
        )
    )
    assert len(batches) == pipeline.num_eval_batches(n, 16, 1)
    mask = np.concatenate([b['mask'].ravel() for b in batches])
    labels = np.concatenate([b['label'].ravel() for b in batches])
    assert mask.sum() == n and mask[:n].all()
    np.testing.assert_array_equal(labels[:n], src.labels['held_out'])
  # Digits are 8x8 at image_size 8: the images are the held-out ones.
  batch = next(
      pipeline.make_eval_iterator(
          digits,
          split='held_out',
          global_batch_size=8,
          image_size=8,
          local_device_count=1,
          **ONE_HOST,
      )
  )
  np.testing.assert_allclose(
      batch['image'][0], digits.images['held_out'][:8], atol=1e-6
  )


def test_digits_without_scikit_learn_is_one_config_line(tmp_path):
  """A machine without scikit-learn (the GPU image) is told what to do."""
  code = (
      "import sys; sys.modules['sklearn'] = None; "
      "from byol_jax import main; sys.argv = ['main', "
      "'--config=experiments/quickstart.py', '--workdir=' + sys.argv[1]]; "
      'from absl import app; app.run(main.main)'
  )
  repo = pathlib.Path(__file__).resolve().parents[2]
  out = subprocess.run(
      [sys.executable, '-c', code, str(tmp_path / 'run')],
      cwd=repo,
      capture_output=True,
      text=True,
      timeout=300,
  )
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2, out.stderr
  assert len(lines) == 1 and 'scikit-learn' in lines[0], out.stderr
  assert "data.source='digits'" in lines[0], lines
  assert 'Traceback' not in out.stderr
