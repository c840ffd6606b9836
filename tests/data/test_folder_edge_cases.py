"""Image folders at their edges: links, split folders, ambiguity, huge images.

What `--dry_run` counts (the listing, read_data=False) must be what a run
holds (the decoded cache); a layout that reads two ways, or an image Pillow
refuses, stops the start with one line naming the fix.
"""

import logging
import os
import pathlib
import subprocess
import sys

import PIL.Image
import pytest
import xla_env

from byol_jax.config import configs
from byol_jax.config import plan
from byol_jax.data import sources

REPO = pathlib.Path(__file__).resolve().parents[2]
ONE = plan.Topology(1, 1)


def _pngs(folder: pathlib.Path, n: int, start: int = 0, size=(4, 4)):
  """n PNGs of one size in folder, pixel value = start + index."""
  folder.mkdir(parents=True, exist_ok=True)
  for i in range(start, start + n):
    PIL.Image.new('RGB', size, (i, i, i)).save(folder / f'{i:03d}.png')


def _tiny(root, cache, **data):
  config = configs.experiment_config('tiny')
  config.data.source = f'folder:{root}'
  config.data.cache_dir = str(cache)
  for field, value in data.items():
    config.data[field] = value
  return config


def _counts(root, cache):
  """(dry run's record, run's record, the run's held train pixel values)."""
  dry = plan.build(_tiny(root, cache), topology=ONE, read_data=False)
  run = plan.build(_tiny(root, cache), topology=ONE)
  return (
      dry.record()['derived'],
      run.record()['derived'],
      sorted(run.source.images['train'][:, 0, 0, 0].tolist()),
  )


def test_symlinks_are_followed_and_dry_run_counts_what_the_run_holds(
    tmp_path, caplog
):
  real, root = tmp_path / 'real', tmp_path / 'data'
  _pngs(real / 'cats', 3)  # a linked class folder
  _pngs(real / 'more_dogs', 2, start=10)  # a linked sub-folder
  _pngs(real / 'loose', 1, start=20)  # a linked file
  _pngs(root / 'train' / 'dogs', 2, start=30)
  _pngs(real / 'test' / 'cats', 1, start=40)
  _pngs(real / 'test' / 'dogs', 1, start=41)
  os.symlink(real / 'cats', root / 'train' / 'cats')
  os.symlink(real / 'more_dogs', root / 'train' / 'dogs' / 'sub')
  os.symlink(real / 'loose' / '020.png', root / 'train' / 'dogs' / 'l.png')
  os.symlink(real / 'test', root / 'test')  # a linked split folder
  os.symlink(root / 'train' / 'dogs', root / 'train' / 'dogs' / 'loop')
  os.symlink(real / 'more_dogs', root / 'train' / 'dogs' / 'sub2')  # again
  os.symlink(tmp_path / 'gone.png', root / 'train' / 'dogs' / 'gone.png')
  with caplog.at_level(logging.WARNING):
    listing = sources.get_source(f'folder:{root}', validate_files=False)
  assert listing.class_names == ('cats', 'dogs')
  assert 'left out 1 broken link(s)' in caplog.text
  assert (listing.num_examples('train'), listing.num_examples('test')) == (
      8,
      2,
  )  # each real folder once: 3 cats + 2 + 2 + 1 dogs
  dry, run, values = _counts(root, tmp_path / 'cache')
  assert values == [0, 1, 2, 10, 11, 20, 30, 31]
  keys = ('num_train_examples', 'eval_num_train_examples', 'num_classes')
  assert (
      {k: dry[k] for k in keys}
      == {k: run[k] for k in keys}
      == {
          'num_train_examples': 8,
          'eval_num_train_examples': 8,
          'num_classes': 2,
      }
  )


@pytest.mark.parametrize('name', ['valid', 'validation', 'val'])
def test_a_validation_folder_is_the_validation_split(tmp_path, caplog, name):
  root = tmp_path / 'data'
  for split, n in (('train', 4), (name, 2), ('test', 2), ('extra', 1)):
    for cls in ('a', 'b'):
      _pngs(root / split / cls, n)
  with caplog.at_level(logging.WARNING):
    src = sources.get_source(f'folder:{root}', validate_files=False)
  assert set(src.raw_splits()) == {'train', name, 'test'}
  assert src.resolve_split('linear_valid') == name
  assert src.resolve_split('test') == 'test'
  assert "ignored the folders ['extra']" in caplog.text  # named, not silent
  d = plan.build(_tiny(root, tmp_path / 'cache'), topology=ONE).probe
  assert d.sweep_valid_split == 'linear_valid'
  assert d.sweep_valid_examples == 4
  # Without test/, the validation folder is what is reported on.
  os.rename(root / 'test', tmp_path / 'moved')
  src = sources.get_source(f'folder:{root}', validate_files=False)
  assert src.resolve_split('test') == name


def _main(*args):
  return subprocess.run(
      [sys.executable, '-m', 'byol_jax.main', *args],
      cwd=REPO,
      env=xla_env.subprocess_env(1),
      capture_output=True,
      text=True,
      timeout=120,
  )


def _assert_one_line(result, *needles):
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def test_a_flat_folder_whose_class_is_named_train_is_one_line(tmp_path):
  root = tmp_path / 'data'
  _pngs(root / 'train', 3)  # PATH/train/*.png: a class, or the train split?
  _assert_one_line(
      _main(
          '--config=experiments/gn_ws.py:tiny,steps=1',
          f'--config.data.source=folder:{root}',
          f'--workdir={tmp_path / "run"}',
          '--dry_run',
      ),
      'Config error: ',
      f'folder:{root} is ambiguous',
      f'{root}/train holds ' 'images',
      'rename it',
      f'move those images into {root}/train/<class>/',
  )
  assert not (tmp_path / 'run').exists()
  # The same in a flat folder with a class named like another split.
  flat = tmp_path / 'flat'
  _pngs(flat / 'cats', 2)
  _pngs(flat / 'test', 2)
  with pytest.raises(
      plan.ConfigError,
      match=r'ambiguous: it has a test/ '
      r'folder but no train/.*rename that class folder$',
  ):
    plan.build(_tiny(flat, tmp_path / 'cache'), topology=ONE, read_data=False)


def test_an_image_above_pillows_limit_is_named_in_one_line(
    tmp_path, monkeypatch
):
  """The decoder's path, in process: Image.MAX_IMAGE_PIXELS lowered to 100."""
  root = tmp_path / 'data'
  _pngs(root / 'a', 3)  # 4x4: sized by these
  _pngs(root / 'b', 2)
  big = root / 'b' / 'zz_big.png'
  PIL.Image.new('RGB', (20, 15)).save(big)  # 300 > 2 x 100 pixels
  monkeypatch.setattr(PIL.Image, 'MAX_IMAGE_PIXELS', 100)
  for read_data in (True, False):
    config = _tiny(root, tmp_path / 'cache', cache_side=4 if read_data else 0)
    if not read_data:
      os.rename(big, root / 'a' / '-big.png')  # the first file: sized by it
      big = root / 'a' / '-big.png'
    with pytest.raises(plan.ConfigError) as err:
      plan.build(config, topology=ONE, read_data=read_data)
    message = str(err.value)
    assert '\n' not in message
    assert message.startswith(
        f"data.source='folder:{root}': {big} is above "
        "Pillow's image size limit: Image size (300 "
        'pixels) exceeds limit of 200 pixels'
    )
    assert message.endswith(
        '(PIL.Image.MAX_IMAGE_PIXELS=100; Pillow refuses '
        'twice that); downscale or remove that image'
    )
  assert not (tmp_path / 'cache').exists()
  # The streaming path's listing check opens only files without an end
  # marker: a whole big PNG is not read there.
  assert sources.get_source(f'folder:{root}').num_examples('train') == 6


def test_an_image_above_pillows_real_limit_stops_the_run_in_one_line(tmp_path):
  """End to end: a 13,500 x 13,500 1-bit PNG (22 kB) as the first image."""
  root = tmp_path / 'data'
  _pngs(root / 'b', 2)
  (root / 'a').mkdir()
  big = root / 'a' / 'big.png'
  PIL.Image.new('1', (13_500, 13_500)).save(big)
  limit = 2 * PIL.Image.MAX_IMAGE_PIXELS
  _assert_one_line(
      _main(
          '--config=experiments/gn_ws.py:tiny,steps=1',
          f'--config.data.source=folder:{root}',
          f'--config.data.cache_dir={tmp_path / "cache"}',
          f'--workdir={tmp_path / "run"}',
      ),
      f"Config error: data.source='folder:{root}': {big} is above Pillow's "
      f'image size limit: Image size (182250000 pixels) exceeds limit of '
      f'{limit} pixels',
      'downscale or remove that image',
  )
  assert not (tmp_path / 'cache').exists()
