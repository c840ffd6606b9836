"""Image folders decoded once (Pillow) and cached on disk (data/folder.py)."""

import io
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import zlib

import numpy as np
import PIL.Image
import pytest

from byol_jax.config import configs
from byol_jax.config import plan
from byol_jax.data import folder
from byol_jax.data import sources
from byol_jax.training import resume


def _image(seed, size=(6, 5)):
  """A random uint8 [H, W, 3] image; size is (height, width)."""
  return np.random.default_rng(seed).integers(0, 256, size + (3,), np.uint8)


def _make_folder(root: pathlib.Path):
  """train/{a,b}: 3 + 2 lossless PNGs, a truncated PNG, a text '.jpg';
  test/{a,b}: one PNG each. Returns {relative path: image} of the good ones."""
  good = {}
  for split, counts in (('train', (3, 2)), ('test', (1, 1))):
    for cls, n in zip('ab', counts):
      os.makedirs(root / split / cls, exist_ok=True)
      for i in range(n):
        rel = f'{split}/{cls}/{i}.png'
        good[rel] = _image(zlib.crc32(rel.encode()))
        PIL.Image.fromarray(good[rel]).save(root / rel)
  buf = io.BytesIO()
  PIL.Image.fromarray(_image(7, (40, 40))).save(buf, format='PNG')
  (root / 'train' / 'a' / 'truncated.png').write_bytes(buf.getvalue()[:200])
  (root / 'train' / 'b' / 'notes.jpg').write_text('not an image\n')
  return good


def _load(root, cache, side=0):
  listing = sources.get_source(f'folder:{root}', validate_files=False)
  return sources.in_memory_folder(listing, side=side, cache_dir=str(cache))


def _expected(good, split):
  names = sorted(k for k in good if k.startswith(split + '/'))
  return np.stack([good[k] for k in names])


def test_folder_is_decoded_skips_counted_then_read_from_cache(tmp_path, caplog):
  root, cache = tmp_path / 'data', tmp_path / 'cache'
  good = _make_folder(root)
  with caplog.at_level(logging.INFO):
    src = _load(root, cache)
  assert isinstance(src, sources.InMemorySource)
  assert src.name == f'folder:{root}' and src.num_classes == 2
  np.testing.assert_array_equal(src.images['train'], _expected(good, 'train'))
  np.testing.assert_array_equal(src.images['test'], _expected(good, 'test'))
  assert src.images['train'].dtype == np.uint8
  np.testing.assert_array_equal(src.labels['train'], [0, 0, 0, 1, 1])
  assert src.num_skipped == {'train': 2, 'test': 0}
  assert "split 'train': 5 of 7 files held in memory as 6x5 uint8" in (
      caplog.text
  )
  assert '2 skipped (not decodable JPEG/PNG); decoded and cached in' in (
      caplog.text
  )
  [entry] = os.listdir(cache)
  assert entry.startswith('data-0-') and src.cache_path == str(cache / entry)
  caplog.clear()
  with caplog.at_level(logging.INFO):
    again = _load(root, cache)
  assert 'read from' in caplog.text and '2 skipped' in caplog.text
  np.testing.assert_array_equal(again.images['train'], src.images['train'])
  assert again.num_skipped == src.num_skipped


def _rebuilt(caplog) -> bool:
  return 'decoded and cached in' in caplog.text


@pytest.mark.parametrize('change', ['modify', 'add', 'corrupt', 'remove'])
def test_a_changed_folder_rebuilds_the_cache(tmp_path, caplog, change):
  root, cache = tmp_path / 'data', tmp_path / 'cache'
  good = _make_folder(root)
  first = _load(root, cache)
  target = root / 'train' / 'b' / '1.png'
  if change == 'modify':  # new pixels, an old mtime
    PIL.Image.fromarray(255 - good['train/b/1.png']).save(target)
    os.utime(target, ns=(1, 2))
  elif change == 'add':
    PIL.Image.fromarray(_image(99)).save(root / 'train' / 'b' / '2.png')
  elif change == 'corrupt':
    target.write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 40)
  else:
    target.unlink()
  caplog.clear()
  with caplog.at_level(logging.INFO):
    src = _load(root, cache)
  assert _rebuilt(caplog)
  n = {'modify': 5, 'add': 6, 'corrupt': 4, 'remove': 4}[change]
  assert len(src.images['train']) == n
  assert src.num_skipped['train'] == (3 if change == 'corrupt' else 2)
  if change == 'corrupt':
    assert '3 skipped (not decodable JPEG/PNG)' in caplog.text
  if change == 'modify':
    np.testing.assert_array_equal(
        src.images['train'][-1], 255 - good['train/b/1.png']
    )
  assert len(first.images['train']) == 5
  assert len(os.listdir(cache)) == 1  # the stale cache is removed


@pytest.mark.parametrize(
    'damage',
    [
        'truncate',
        'flip_byte',
        'flip_header',
        'not_a_zip',
        'empty',
        'other_listing',
        'split_missing',
        'no_splits',
    ],
)
def test_a_corrupt_cache_is_rebuilt_not_trusted(tmp_path, caplog, damage):
  root, cache = tmp_path / 'data', tmp_path / 'cache'
  good = _make_folder(root)
  first = _load(root, cache)
  path = pathlib.Path(first.cache_path)
  data = path.read_bytes()
  with np.load(path) as z:
    arrays = dict(z)
  pixel = data.index(arrays['train.images'].tobytes()) + 7
  if damage == 'truncate':
    path.write_bytes(data[: len(data) - 17])
  elif damage in ('flip_byte', 'flip_header'):  # only the CRC-32 can tell
    at = pixel if damage == 'flip_byte' else data.index(b"'descr'") + 9
    path.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :])
  elif damage in ('not_a_zip', 'empty'):
    path.write_bytes(b'{"key": ' if damage == 'not_a_zip' else b'')
  else:  # whole and readable, but not this folder's
    if damage == 'other_listing':
      arrays['key'] = np.asarray('0' * 64)
    for name in list(arrays):
      if (damage == 'split_missing' and name.startswith('test.')) or (
          damage == 'no_splits' and name != 'key'
      ):
        del arrays[name]
    np.savez(path, **arrays)
  caplog.clear()
  with caplog.at_level(logging.INFO):
    src = _load(root, cache)
  assert 'is incomplete or corrupt' in caplog.text and _rebuilt(caplog)
  assert os.listdir(cache) == [path.name]
  np.testing.assert_array_equal(src.images['train'], _expected(good, 'train'))
  np.testing.assert_array_equal(src.images['test'], _expected(good, 'test'))
  caplog.clear()
  with caplog.at_level(logging.INFO):
    _load(root, cache)
  assert not _rebuilt(caplog)  # the rebuilt cache is good


def test_mixed_sizes_need_a_cache_side(tmp_path):
  root = tmp_path / 'mixed'
  for i, size in enumerate(((10, 12), (20, 14))):
    os.makedirs(root / 'c', exist_ok=True)
    PIL.Image.fromarray(_image(i, size)).save(root / 'c' / f'{i}.png')
  with pytest.raises(
      ValueError,
      match=r'different sizes \(e.g. 12x10 and '
      r'14x20\); set --config.data.cache_side=N',
  ):
    _load(root, tmp_path / 'cache')
  src = _load(root, tmp_path / 'cache', side=8)
  assert src.images['train'].shape == (2, 8, 8, 3)
  # The 10x12 image: shorter side 10 -> 8 (width 12 -> 10), central 8x8.
  expected = np.asarray(
      PIL.Image.fromarray(_image(0, (10, 12))).resize(
          (10, 8), PIL.Image.BICUBIC
      )
  )[:, 1:9]
  np.testing.assert_array_equal(src.images['train'][0], expected)


def test_mixed_sizes_stop_before_the_larger_images_are_decoded(
    tmp_path, monkeypatch
):
  # plan.py's memory estimate takes the first image's size: a folder of
  # large photos behind a thumbnail must not be decoded whole (memory).
  root = tmp_path / 'mixed'
  os.makedirs(root / 'c')
  PIL.Image.fromarray(_image(0, (10, 12))).save(root / 'c' / '00.png')
  big = np.zeros((1000, 1500, 3), np.uint8)
  for i in range(1, 21):
    PIL.Image.fromarray(big).save(root / 'c' / f'{i:02d}.jpg')
  decoded = []
  convert = PIL.Image.Image.convert

  def spy(im, *args, **kwargs):
    decoded.append(im.size)
    return convert(im, *args, **kwargs)

  monkeypatch.setattr(PIL.Image.Image, 'convert', spy)
  listing = sources.get_source(f'folder:{root}', validate_files=False)
  with pytest.raises(
      ValueError,
      match=r'different sizes \(e.g. 12x10 and '
      r'1500x1000\); set --config.data.cache_side=N',
  ):
    folder.arrays(listing, cache_dir=str(tmp_path / 'cache'), num_threads=1)
  assert decoded.count((1500, 1000)) < 20


def test_16_bit_grayscale_png_is_scaled_to_8_bits_not_saturated(tmp_path):
  root = tmp_path / 'deep'
  os.makedirs(root / 'c')
  grey = np.random.default_rng(0).integers(0, 2**16, (6, 5)).astype(np.uint16)
  PIL.Image.fromarray(grey).save(root / 'c' / '0.png')  # mode I;16
  with PIL.Image.open(root / 'c' / '0.png') as im:
    assert im.mode.startswith('I')
  src = _load(root, tmp_path / 'cache')
  # What libpng's 16 -> 8 bit strip (tf.io.decode_png, the streaming path)
  # gives: the high byte.
  np.testing.assert_array_equal(
      src.images['train'][0], np.repeat((grey >> 8)[..., None], 3, -1)
  )


def test_a_dangling_symlink_is_left_out_of_the_listing_and_logged(
    tmp_path, caplog
):
  root, cache = tmp_path / 'data', tmp_path / 'cache'
  good = _make_folder(root)
  os.symlink(tmp_path / 'gone.png', root / 'train' / 'a' / 'link.png')
  with caplog.at_level(logging.INFO):
    src = _load(root, cache)
  np.testing.assert_array_equal(src.images['train'], _expected(good, 'train'))
  assert src.num_skipped == {'train': 2, 'test': 0}  # as --dry_run counts
  assert 'left out 1 broken link(s)' in caplog.text
  assert '2 skipped (not decodable JPEG/PNG)' in caplog.text


# Builds a folder's cache, stopping for good once its file is written, before
# it is renamed into place.
_WRITER = """
import sys, time
import numpy as np
from byol_jax.data import sources
savez = np.savez
def savez_then_wait(file, *args, **kwargs):
  savez(file, *args, **kwargs)
  print('saved', flush=True)
  time.sleep(600)
np.savez = savez_then_wait
listing = sources.get_source('folder:' + sys.argv[1], validate_files=False)
sources.in_memory_folder(listing, cache_dir=sys.argv[2])
"""


def test_a_writer_killed_mid_write_leaves_nothing_behind(tmp_path, caplog):
  root, cache = tmp_path / 'data', tmp_path / 'cache'
  good = _make_folder(root)
  with open(tmp_path / 'stderr', 'w') as err:
    writer = subprocess.Popen(
        [sys.executable, '-c', _WRITER, str(root), str(cache)],
        cwd=pathlib.Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    saved = writer.stdout.readline()  # '' if it failed before saving
    assert saved == 'saved\n', (tmp_path / 'stderr').read_text()
    partial = os.listdir(cache)  # the half-written cache, under a temp name
    assert len(partial) == 1 and partial[0].startswith('.tmp-')
    writer.send_signal(signal.SIGTERM)
    assert writer.wait(timeout=60) == -signal.SIGTERM
    writer.stdout.close()
  # A live writer's temporary directory (this process's) is left alone.
  live = cache / f'.tmp-{socket.gethostname()}-{os.getpid()}-x'
  live.mkdir()
  src = _load(root, cache)  # the next start
  rest = sorted(os.listdir(cache))
  assert len(rest) == 2 and rest[0] == live.name, rest
  assert rest[1] == os.path.basename(src.cache_path)
  np.testing.assert_array_equal(src.images['train'], _expected(good, 'train'))
  np.testing.assert_array_equal(src.images['test'], _expected(good, 'test'))
  caplog.clear()
  with caplog.at_level(logging.INFO):
    again = _load(root, cache)
  assert 'read from' in caplog.text and not _rebuilt(caplog)
  assert again.cache_path == src.cache_path
  np.testing.assert_array_equal(again.images['train'], src.images['train'])


@pytest.mark.parametrize('failure', ['read_only', 'disk_full'])
def test_an_unwritable_cache_dir_warns_and_the_run_goes_on(
    tmp_path, caplog, monkeypatch, failure
):
  root, cache = tmp_path / 'data', tmp_path / 'cache'
  good = _make_folder(root)
  os.makedirs(cache)
  if failure == 'read_only':

    def refuse(*args, **kwargs):
      raise PermissionError(13, 'Permission denied', str(cache))

    monkeypatch.setattr(folder.tempfile, 'mkstemp', refuse)
  else:

    def full(file, **arrays):
      file.write(b'PK' * 100)  # a part was written
      raise OSError(28, 'No space left on device')

    monkeypatch.setattr(folder.np, 'savez', full)
  with caplog.at_level(logging.INFO):
    src = _load(root, cache)
  np.testing.assert_array_equal(src.images['train'], _expected(good, 'train'))
  np.testing.assert_array_equal(src.images['test'], _expected(good, 'test'))
  assert src.num_skipped == {'train': 2, 'test': 0}
  assert 'could not be cached' in caplog.text
  assert os.listdir(cache) == []  # nothing half-written left behind
  monkeypatch.undo()
  caplog.clear()
  with caplog.at_level(logging.INFO):
    again = _load(root, cache)
  assert _rebuilt(caplog)
  np.testing.assert_array_equal(again.images['train'], src.images['train'])


def _tiny(source, *overrides):
  config = configs.experiment_config('tiny')
  config.data.source = source
  for key, value in overrides:
    section, field = key.split('.')
    config[section][field] = value
  return config


def test_plan_holds_a_folder_that_fits_in_memory_and_streams_a_larger_one(
    tmp_path, monkeypatch
):
  root = tmp_path / 'data'
  _make_folder(root)
  one = plan.Topology(1, 1)
  cache = ('data.cache_dir', str(tmp_path / 'cache'))
  run = plan.build(_tiny(f'folder:{root}', cache), topology=one)
  assert isinstance(run.source, sources.InMemorySource)
  d = run.data
  assert d.path == 'in_memory' and run.pretrain.num_train_examples == 5
  assert d.in_memory_mb == round(7 * 6 * 5 * 3 / 2**20, 1)
  dry = plan.build(
      _tiny(f'folder:{root}', cache), topology=one, read_data=False
  ).data
  assert dry.path == 'in_memory'
  assert dry.in_memory_mb == round(9 * 6 * 5 * 3 / 2**20, 1)  # listed files
  streamed = plan.build(
      _tiny(f'folder:{root}', cache, ('data.max_in_memory_mb', 0)), topology=one
  )
  assert type(streamed.source) is sources.FolderSource  # validated
  assert streamed.data.path == 'streaming'
  assert streamed.source.num_skipped == {'train': 2, 'test': 0}
  assert resume.trajectory(run)['derived.data_path'] == 'in_memory'
  monkeypatch.setattr(sources, 'tensorflow_importable', lambda: False)
  with pytest.raises(
      plan.ConfigError,
      match=r"^data.source='folder:.*': its decoded size "
      r'\(0.0 MiB\) is above data.max_in_memory_mb=0, so it '
      r'streams through tf.data, and TensorFlow is not '
      r'importable; install it',
  ):
    plan.build(
        _tiny(f'folder:{root}', cache, ('data.max_in_memory_mb', 0)),
        topology=one,
    )
  plan.build(_tiny(f'folder:{root}', cache), topology=one)  # needs no TF


def test_a_folder_whose_first_files_are_not_images_is_still_held_in_memory(
    tmp_path, monkeypatch
):
  root = tmp_path / 'data'
  good = _make_folder(root)
  for i in range(20):  # sorted before every image of train/a
    (root / 'train' / 'a' / f'-junk{i:02d}.jpg').write_text('not an image\n')
  one = plan.Topology(1, 1)
  cache = ('data.cache_dir', str(tmp_path / 'cache'))
  dry = plan.build(
      _tiny(f'folder:{root}', cache), topology=one, read_data=False
  ).data
  assert dry.path == 'in_memory' and dry.in_memory_mb >= 0
  monkeypatch.setattr(sources, 'tensorflow_importable', lambda: False)
  run = plan.build(_tiny(f'folder:{root}', cache), topology=one)
  assert run.data.path == 'in_memory'
  np.testing.assert_array_equal(
      run.source.images['train'], _expected(good, 'train')
  )
  assert run.source.num_skipped == {'train': 22, 'test': 0}


@pytest.mark.parametrize(
    'field,value',
    [
        ('data.max_in_memory_mb', -1),
        ('data.cache_side', -3),
        ('data.in_memory_on', 'gpu'),
        ('data.cache_dir', 'gs://bucket/cache'),
    ],
)
def test_bad_in_memory_fields_are_config_errors(field, value):
  with pytest.raises(plan.ConfigError, match=f'^{field}='):
    plan.build(
        _tiny('digits', (field, value)),
        topology=plan.Topology(1, 1),
        read_data=False,
    )
