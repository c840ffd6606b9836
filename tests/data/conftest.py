"""Tiny TFDS datasets, prepared once per test session into a temporary dir.

TFDS cannot download here, so `tfds_data_dir` prepares, through TFDS's own
builders, a few dozen generated images under the registered names the code
looks up (tfds:cifar10, tfds:imagenet2012) and one train-only dataset. The
code under test then opens them as any prepared dataset: `tfds.builder(name,
data_dir=...)`, split sizes and files from their dataset_info.json.
"""

import io

import numpy as np
import PIL.Image
import pytest

# name -> {split: number of examples} of the datasets `tfds_data_dir` holds.
TINY_TFDS_SIZES = {
    'cifar10': {'train': 24, 'test': 12},
    'imagenet2012': {'train': 16, 'validation': 8},
    'byol_jax_held_out_images': {'train': 30},
}


def _color_jpeg(label):
  """A constant-colour JPEG whose colour encodes a label in [0, 1000).

  test_pipeline.py's _decode_label reads the label back from a crop.
  """
  rgb = [
      10 + 25 * (label % 10),
      10 + 25 * (label // 10 % 10),
      10 + 25 * (label // 100),
  ]
  buf = io.BytesIO()
  PIL.Image.fromarray(np.full((48, 64, 3), rgb, np.uint8)).save(
      buf, format='JPEG', quality=95
  )
  return buf.getvalue()


def _prepare(data_dir):
  """Prepares the TINY_TFDS_SIZES datasets in `data_dir`."""
  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds
  from tensorflow_datasets.datasets.imagenet2012 import (
      imagenet2012_dataset_builder as imagenet,
  )
  from tensorflow_datasets.image_classification import cifar
  # pylint: enable=g-import-not-at-top
  sizes = TINY_TFDS_SIZES

  class TinyCifar10(cifar.Cifar10, skip_registration=True):
    """tfds:cifar10 (name, version, features): random 32x32 images."""

    name = 'cifar10'

    def _split_generators(self, dl_manager):
      del dl_manager
      return {s: self._examples(s, n) for s, n in sizes['cifar10'].items()}

    def _examples(self, split, n):
      rng = np.random.default_rng(len(split))
      for i in range(n):
        yield f'{split}{i}', {
            'id': f'{split}_{i}',
            'label': i % 10,
            'image': rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        }

  class TinyImagenet2012(imagenet.Builder, skip_registration=True):
    """tfds:imagenet2012: JPEGs whose colour encodes their label."""

    name = 'imagenet2012'
    pkg_dir_path = imagenet.Builder._get_pkg_dir_path()  # its metadata files

    def _split_generators(self, dl_manager):
      del dl_manager
      labels = {
          'train': [int(l) for l in (np.arange(16) * 37 + 5) % 1000],
          'validation': list(range(0, 1000, 125)),
      }
      assert {s: len(l) for s, l in labels.items()} == sizes['imagenet2012']
      return {s: self._examples(l) for s, l in labels.items()}

    def _examples(self, labels):
      for i, label in enumerate(labels):
        yield i, {
            'image': io.BytesIO(_color_jpeg(label)),
            'label': label,
            'file_name': f'{i}.JPEG',
        }

  class ByolJaxHeldOutImages(tfds.core.GeneratorBasedBuilder):
    """A train split only: 8x8 PNGs whose value is 5 * index."""

    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          supervised_keys=('image', 'label'),
          features=tfds.features.FeaturesDict(
              {
                  'image': tfds.features.Image(
                      shape=(None, None, 3), encoding_format='png'
                  ),
                  'label': tfds.features.ClassLabel(num_classes=3),
              }
          ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {
          'train': self._generate_examples(
              sizes['byol_jax_held_out_images']['train']
          )
      }

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {'image': np.full((8, 8, 3), 5 * i, np.uint8), 'label': i % 3}

  for builder in (TinyCifar10, TinyImagenet2012, ByolJaxHeldOutImages):
    builder(data_dir=str(data_dir)).download_and_prepare()


@pytest.fixture(scope='session')
def tfds_data_dir(tmp_path_factory):
  """A TFDS data_dir with the TINY_TFDS_SIZES datasets prepared, or a skip."""
  pytest.importorskip('tensorflow_datasets')
  data_dir = tmp_path_factory.mktemp('tfds')
  _prepare(data_dir)
  return str(data_dir)
