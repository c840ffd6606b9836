"""Tests for byol_jax.data.sources: spec parsing, splits, folders, bad files."""
import io
import logging
import os

import numpy as np
import PIL.Image
import pytest

from byol_jax.data import sources

CIFAR_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                 'frog', 'horse', 'ship', 'truck')


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
  (root / 'a' / 'truncated.jpg').write_bytes(full[:len(full) * 2 // 5])
  (root / 'a' / 'notes.jpg').write_text('this is not an image\n')
  for i in range(2):
    PIL.Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(
        root / 'b' / f'{i}.png')
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
  assert x.min() == 0. and x.max() == 1.
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
  assert sources.tfds_split('imagenet2012', 'pretrain') == 'train'
  assert sources.tfds_split('imagenet2012', 'linear_train') == 'train[10000:]'
  assert sources.tfds_split('imagenet2012', 'linear_valid') == 'train[:10000]'
  assert sources.tfds_split('imagenet2012', 'test') == 'validation'
  assert sources.tfds_split('cifar10', 'test', ('train', 'test')) == 'test'
  assert sources.tfds_split('imagenette', 'test',
                            ('train', 'validation')) == 'validation'
  with pytest.raises(ValueError, match='linear_valid'):
    sources.tfds_split('cifar10', 'linear_valid', ('train', 'test'))


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
