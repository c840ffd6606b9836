"""Tests for byol_jax.data.pipeline: shapes, sharding, resumption, bad data."""

import io
import os
import subprocess
import sys
import time

import jax
import numpy as np
import PIL.Image
import pytest
import xla_env  # tests/xla_env.py

from byol_jax.data import crops
from byol_jax.data import pipeline
from byol_jax.data import sources

ONE_HOST = dict(process_index=0, process_count=1)


def _ids_source(n=48, side=12):
  """In-memory source whose label is the example's index."""
  images = np.broadcast_to(
      (np.arange(n) / n)[:, None, None, None], (n, side, side, 3)
  ).astype(np.float32)
  labels = np.arange(n, dtype=np.int32)
  return sources.InMemorySource('ids', n, {'train': images}, {'train': labels})


@pytest.fixture(scope='module')
def ids_folder(tmp_path_factory):
  """48 constant-colour PNGs in 3 classes; the red level encodes the index."""
  root = tmp_path_factory.mktemp('ids')
  for i in range(48):
    folder = root / f'class{i % 3}'
    folder.mkdir(exist_ok=True)
    PIL.Image.fromarray(
        np.full((14, 18, 3), (10 + 5 * i, 7, 200), np.uint8)
    ).save(folder / f'{i:03d}.png')
  return sources.get_source(f'folder:{root}')


def _folder_ids(images):
  """Index of each constant image of `ids_folder` (from its red level)."""
  red = images[..., 0].reshape(-1, images.shape[-3] * images.shape[-2])
  return np.round((red.mean(-1) * 255 - 10) / 5).astype(int)


@pytest.fixture(scope='module')
def tiny_tfds(tmp_path_factory):
  """A real prepared TFDS dataset (4 TFRecord files); label == index."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class ByolJaxTestImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          supervised_keys=('image', 'label'),
          features=tfds.features.FeaturesDict(
              {
                  'image': tfds.features.Image(
                      shape=(None, None, 3), encoding_format='jpeg'
                  ),
                  'label': tfds.features.ClassLabel(num_classes=40),
              }
          ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples(40)}

    def _generate_examples(self, n):
      for i in range(n):
        rng = np.random.default_rng(i)
        yield i, {
            'image': rng.integers(0, 256, (20 + i % 7, 24, 3), dtype=np.uint8),
            'label': i,
        }

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  builder = ByolJaxTestImages(data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=4)
  )
  return sources.get_source('tfds:byol_jax_test_images', data_dir=data_dir)


def make_bad_folder(root):
  """a/: 3 JPEGs, a truncated JPEG, a text file named .jpg; b/: 2 PNGs."""
  for name in ('a', 'b'):
    os.makedirs(root / name)
  for i in range(4):
    buf = io.BytesIO()
    PIL.Image.fromarray(
        np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    ).save(buf, format='JPEG')
    data = buf.getvalue()
    name = f'{i}.jpg' if i < 3 else 'truncated.jpg'
    (root / 'a' / name).write_bytes(data if i < 3 else data[: len(data) // 3])
  (root / 'a' / 'notes.jpg').write_text('this is not an image\n')
  for i in range(2):
    PIL.Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(
        root / 'b' / f'{i}.png'
    )
  return root


def _decode_label(images):
  mean = images.reshape(images.shape[:-3] + (-1, 3)).mean(-2) * 255
  digits = np.round((mean - 10) / 25).astype(int)
  return digits[..., 0] + 10 * digits[..., 1] + 100 * digits[..., 2]


def test_imagenet_tfds_two_views_aligned(tfds_data_dir):
  """Streams tfds:imagenet2012: 16 train JPEGs (conftest.py's _color_jpeg)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  src = sources.get_source('tfds:imagenet2012', data_dir=tfds_data_dir)
  assert type(src) is sources.TfdsSource and src.num_classes == 1000
  assert src.resolve_split('pretrain') == 'train'
  assert src.num_examples('pretrain') == 16
  labels = [
      ex['label']
      for ex in tfds.as_numpy(
          src.builder.as_dataset(split='train', shuffle_files=False)
      )
  ]
  assert len(set(labels)) == 16
  batch = next(
      pipeline.make_pretrain_iterator(
          src,
          split='pretrain',
          global_batch_size=16,
          image_size=224,
          seed=0,
          **ONE_HOST,
      )
  )
  devices = jax.local_device_count()
  for view in ('view1', 'view2'):
    assert batch[view].shape == (devices, 16 // devices, 224, 224, 3)
    assert batch[view].dtype == np.float32
    assert 0.0 <= batch[view].min() and batch[view].max() <= 1.0
  assert batch['label'].shape == (devices, 16 // devices)
  assert batch['label'].dtype == np.int32
  assert sorted(batch['label'].ravel()) == sorted(labels)
  np.testing.assert_array_equal(_decode_label(batch['view1']), batch['label'])
  np.testing.assert_array_equal(_decode_label(batch['view2']), batch['label'])


def test_global_batch_must_divide():
  with pytest.raises(ValueError, match='global_batch_size=30'):
    pipeline.make_pretrain_iterator(
        _ids_source(),
        split='train',
        global_batch_size=30,
        image_size=8,
        seed=0,
        local_device_count=8,
        **ONE_HOST,
    )


def _first_epoch_ids(make, hosts, batches, to_ids):
  out = []
  for p in range(hosts):
    it = make(process_index=p, process_count=hosts)
    out.append(
        np.concatenate([to_ids(next(it)).ravel() for _ in range(batches)])
    )
  return out


def test_two_hosts_disjoint_and_cover_in_memory():
  src = _ids_source(48)
  make = lambda **kw: pipeline.make_pretrain_iterator(
      src,
      split='train',
      global_batch_size=16,
      image_size=8,
      seed=3,
      local_device_count=2,
      **kw,
  )
  a, b = _first_epoch_ids(make, 2, 3, lambda x: x['label'])
  assert len(set(a)) == len(set(b)) == 24  # a host's epoch: no repeats
  assert not set(a) & set(b) and set(a) | set(b) == set(range(48))


def test_two_hosts_disjoint_and_cover_folder(ids_folder):
  make = lambda **kw: pipeline.make_pretrain_iterator(
      ids_folder,
      split='train',
      global_batch_size=16,
      image_size=8,
      seed=3,
      local_device_count=2,
      **kw,
  )
  a, b = _first_epoch_ids(make, 2, 3, lambda x: _folder_ids(x['view1']))
  assert len(set(a)) == len(set(b)) == 24
  assert not set(a) & set(b) and set(a) | set(b) == set(range(48))
  ev = [
      list(
          pipeline.make_eval_iterator(
              ids_folder,
              split='train',
              global_batch_size=16,
              image_size=8,
              local_device_count=2,
              process_index=p,
              process_count=2,
          )
      )
      for p in range(2)
  ]
  assert len(ev[0]) == len(ev[1]) == 3
  ids = [
      np.concatenate([_folder_ids(x['image'])[x['mask'].ravel()] for x in host])
      for host in ev
  ]
  assert sorted(np.concatenate(ids)) == list(range(48))


def test_two_hosts_disjoint_and_cover_tfds(tiny_tfds):
  make = lambda **kw: pipeline.make_pretrain_iterator(
      tiny_tfds,
      split='train',
      global_batch_size=8,
      image_size=8,
      seed=1,
      local_device_count=2,
      **kw,
  )
  a, b = _first_epoch_ids(make, 2, 5, lambda x: x['label'])
  assert len(set(a)) == len(set(b)) == 20
  assert not set(a) & set(b) and set(a) | set(b) == set(range(40))
  labels = []
  for p in range(2):
    for x in pipeline.make_eval_iterator(
        tiny_tfds,
        split='train',
        global_batch_size=6,
        image_size=8,
        local_device_count=1,
        process_index=p,
        process_count=2,
    ):
      labels += list(x['label'][x['mask']])
  assert sorted(labels) == list(range(40))


def _assert_resumes(make, k, extra=3):
  """start_step=k reproduces batches k..k+extra of an uninterrupted run."""
  full = make(0)
  expected = [next(full) for _ in range(k + extra)][k:]
  resumed = make(k)
  for want in expected:
    got = next(resumed)
    assert got.keys() == want.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_resume_in_memory_across_epochs():
  src = sources.get_source('digits')  # 1500 examples: epoch 1 starts in 23
  make = lambda k: pipeline.make_pretrain_iterator(
      src,
      split='pretrain',
      global_batch_size=64,
      image_size=12,
      seed=5,
      start_step=k,
      local_device_count=4,
      **ONE_HOST,
  )
  _assert_resumes(make, 22)
  make_sup = lambda k: pipeline.make_supervised_iterator(
      src,
      split='train',
      global_batch_size=64,
      image_size=12,
      seed=5,
      start_step=k,
      local_device_count=4,
      **ONE_HOST,
  )
  _assert_resumes(make_sup, 24)


def test_resume_folder_and_tfds(ids_folder, tiny_tfds):
  for src, k in ((ids_folder, 7), (tiny_tfds, 11)):
    make = lambda k, src=src: pipeline.make_pretrain_iterator(
        src,
        split='train',
        global_batch_size=8,
        image_size=8,
        seed=2,
        start_step=k,
        local_device_count=2,
        **ONE_HOST,
    )
    _assert_resumes(make, k)
  other_seed = pipeline.make_pretrain_iterator(
      tiny_tfds,
      split='train',
      global_batch_size=8,
      image_size=8,
      seed=3,
      local_device_count=2,
      **ONE_HOST,
  )
  first = pipeline.make_pretrain_iterator(
      tiny_tfds,
      split='train',
      global_batch_size=8,
      image_size=8,
      seed=2,
      local_device_count=2,
      **ONE_HOST,
  )
  assert not np.array_equal(next(other_seed)['label'], next(first)['label'])


def test_resume_far_ahead_skips_without_decoding(ids_folder):
  # 10**7 steps of 8 = 1.7M epochs of 48 images: walking them would decode
  # 8e7 images (hours). 300 s is far from that and from a loaded 2-core
  # machine's compile (53 s measured at load 19), so timing cannot flake.
  start = time.perf_counter()
  batch = next(
      pipeline.make_pretrain_iterator(
          ids_folder,
          split='train',
          global_batch_size=8,
          image_size=8,
          seed=0,
          start_step=10**7,
          local_device_count=1,
          **ONE_HOST,
      )
  )
  assert time.perf_counter() - start < 300
  assert batch['view1'].shape == (1, 8, 8, 8, 3)
  # In memory: only the step's own indices are computed.
  start = time.perf_counter()
  batch = next(
      pipeline.make_pretrain_iterator(
          _ids_source(),
          split='train',
          global_batch_size=8,
          image_size=8,
          seed=0,
          start_step=10**7,
          local_device_count=1,
          **ONE_HOST,
      )
  )
  assert time.perf_counter() - start < 300
  assert np.asarray(batch['view1']).shape == (1, 8, 8, 8, 3)


def test_eval_pads_and_masks():
  src = sources.get_source('digits')
  for p in range(2):
    batches = list(
        pipeline.make_eval_iterator(
            src,
            split='test',
            global_batch_size=64,
            image_size=8,
            local_device_count=4,
            process_index=p,
            process_count=2,
        )
    )
    assert len(batches) == pipeline.num_eval_batches(297, 64, 2) == 5
    mask = np.concatenate([b['mask'].ravel() for b in batches])
    assert mask.sum() == (149 if p == 0 else 148) and mask[: mask.sum()].all()
    assert batches[0]['image'].shape == (4, 8, 8, 8, 3)
  # 8px images at image_size 8 are neither cropped nor changed.
  batch = next(
      pipeline.make_eval_iterator(
          src,
          split='test',
          global_batch_size=8,
          image_size=8,
          local_device_count=1,
          **ONE_HOST,
      )
  )
  np.testing.assert_allclose(
      batch['image'][0], src.images['test'][:8], atol=1e-6
  )


def test_eval_center_crop_in_memory_matches_streaming(tmp_path):
  src = sources.get_source('synthetic:64')
  for i in range(8):
    (tmp_path / 'c').mkdir(exist_ok=True)
    PIL.Image.fromarray(src.images['test'][i]).save(tmp_path / 'c' / f'{i}.png')
  folder = sources.get_source(f'folder:{tmp_path}')
  kw = dict(
      split='test',
      global_batch_size=8,
      image_size=32,
      local_device_count=1,
      **ONE_HOST,
  )
  a = next(pipeline.make_eval_iterator(src, **kw))['image'][0]
  b = next(pipeline.make_eval_iterator(folder, **{**kw, 'split': 'train'}))[
      'image'
  ][0]
  # Same crop, same bicubic resize (on device vs TF's on the host).
  np.testing.assert_allclose(a, b, atol=1e-5)
  # The crop is the central 56 of 64 pixels (224/256): a 32px resize of it
  # differs from a resize of the whole image.
  whole = pipeline.crop_resize(src.images['test'][:8], (0, 0, 64, 64), 32)
  # Measured 0.239 (AMD EPYC); 31 other groups of 8 images: 0.237 +- 0.001.
  assert np.abs(a - whole).mean() > 0.05


def test_crop_boxes_of_the_streaming_path_are_the_specification():
  """tf.math (inside tf.data) cuts numpy's boxes from the same uniforms."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  u = np.random.default_rng(0).random((4000, crops.NUM_U))
  box_np = crops.sample_crop(np, u, 375, 500)
  box_tf = crops.sample_crop(
      tf.math,
      tf.constant(u),
      tf.constant(375.0, tf.float64),
      tf.constant(500.0, tf.float64),
  )
  for a, b in zip(box_np, box_tf):
    np.testing.assert_array_equal(a, b.numpy())
  for h, w, size in ((375, 500, 224), (32, 32, 32), (33, 40, 32), (8, 8, 16)):
    centre_np = crops.center_crop(np, float(h), float(w), size)
    centre_tf = crops.center_crop(
        tf.math,
        tf.constant(float(h), tf.float64),
        tf.constant(float(w), tf.float64),
        size,
    )
    np.testing.assert_array_equal(centre_np, [x.numpy() for x in centre_tf])
    side = min(h, w)
    crop = int(side * 224 / 256) if side > size else side
    assert tuple(centre_np) == (
        (h - crop + 1) // 2,
        (w - crop + 1) // 2,
        crop,
        crop,
    )
  y0, x0, h, w = box_np
  assert (y0 >= 0).all() and (x0 >= 0).all()
  assert (y0 + h <= 375).all() and (x0 + w <= 500).all()
  # A 10x1000 strip: the height is clamped to the image, the box stays inside.
  y0, x0, h, w = crops.sample_crop(np, u[:50], 10, 1000)
  assert (h <= 10).all() and (x0 + w <= 1000).all() and (y0 + h <= 10).all()
  # (tests/data/test_crops.py checks the area distribution.)


def test_supervised_flips_half():
  n, side = 512, 16
  ramp = np.broadcast_to(
      np.linspace(0, 1, side)[None, None, :, None], (n, side, side, 3)
  ).astype(np.float32)
  src = sources.InMemorySource(
      'ramp', 2, {'train': ramp}, {'train': np.zeros(n, np.int32)}
  )
  batch = next(
      pipeline.make_supervised_iterator(
          src,
          split='train',
          global_batch_size=n,
          image_size=8,
          seed=0,
          local_device_count=1,
          **ONE_HOST,
      )
  )
  image = batch['image'][0]
  assert batch.keys() == {'image', 'label'}
  flipped = image[:, 4, 0, 0] > image[:, 4, -1, 0]
  # Binomial sd 0.022; 120 draws (60 seeds x 2 steps, AMD EPYC): 0.501 +-
  # 0.023, 0.441..0.564 (seed 0: 0.441): 0.1 is 4.5 sd; no flip: 0.
  assert abs(flipped.mean() - 0.5) < 0.1


def test_bad_files_in_pipeline(tmp_path):
  root = make_bad_folder(tmp_path / 'data')
  kw = dict(
      global_batch_size=5, image_size=16, local_device_count=1, **ONE_HOST
  )
  for validate in (True, False):  # validated source, or tf.data ignore_errors
    src = sources.get_source(f'folder:{root}', validate_files=validate)
    batches = list(pipeline.make_eval_iterator(src, split='train', **kw))
    assert sum(b['mask'].sum() for b in batches) == 5
    batch = next(
        pipeline.make_pretrain_iterator(src, split='train', seed=0, **kw)
    )
    assert batch['view1'].shape == (1, 5, 16, 16, 3)


def test_prefetch_to_device_shards_for_pmap():
  devices = jax.local_devices()
  it = pipeline.make_pretrain_iterator(
      sources.get_source('digits'),
      split='train',
      global_batch_size=2 * len(devices),
      image_size=8,
      seed=0,
      **ONE_HOST,
  )
  host = [next(it) for _ in range(3)]
  it = pipeline.make_pretrain_iterator(
      sources.get_source('digits'),
      split='train',
      global_batch_size=2 * len(devices),
      image_size=8,
      seed=0,
      **ONE_HOST,
  )
  on_device = list(
      pipeline.prefetch_to_device((next(it) for _ in range(3)), size=2)
  )
  assert len(on_device) == 3
  x = on_device[0]['view1']
  assert isinstance(x, jax.Array)
  assert [s.device for s in x.addressable_shards] == devices
  assert x.addressable_shards[0].data.shape == (1, 2, 8, 8, 3)
  pmap_sharding = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.asarray(devices), ('i',)),
      jax.sharding.PartitionSpec('i'),
  )
  assert x.sharding.is_equivalent_to(pmap_sharding, x.ndim)
  sums = jax.pmap(lambda b: b['view1'].sum() + b['label'].sum())(on_device[2])
  expected = host[2]['view1'].sum((1, 2, 3, 4)) + host[2]['label'].sum(1)
  np.testing.assert_allclose(np.asarray(sums), expected, rtol=1e-5)


def test_in_memory_sources_need_no_tensorflow():
  code = (
      "import sys; sys.modules['tensorflow'] = None; "
      "sys.modules['tensorflow_datasets'] = None\n"
      'from byol_jax import augment\n'
      'from byol_jax.data import pipeline, sources\n'
      "src = sources.get_source('digits')\n"
      'kw = dict(global_batch_size=8, image_size=16, process_index=0, '
      'process_count=1, local_device_count=1)\n'
      "b = next(pipeline.make_pretrain_iterator(src, split='pretrain', "
      'seed=0, **kw))\n'
      "e = next(pipeline.make_eval_iterator(src, split='test', **kw))\n"
      "print(b['view2'].shape, e['image'].shape, 'tensorflow' in sys.modules "
      "and sys.modules['tensorflow'] is not None)\n"
  )
  env = xla_env.subprocess_env(1, JAX_PLATFORMS='cpu')
  root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
  out = subprocess.run(
      [sys.executable, '-c', code],
      cwd=root,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  shapes = '(1, 8, 16, 16, 3) (1, 8, 16, 16, 3)'
  assert out.stdout.split('\n')[0] == shapes + ' False'
