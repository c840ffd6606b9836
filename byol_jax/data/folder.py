"""Image folders: `folder:<path>`, class sub-folders of JPEG/PNG images.

Every file is listed and, unless asked not to, checked once (its header and
end marker; Pillow decodes only the files whose end is missing) so that the
streaming pipeline never meets an undecodable file. Decoding for the
in-memory path is memory_sources.in_memory_folder's (through image_cache).
"""
import concurrent.futures
import dataclasses
import os
import time
from typing import Mapping

from absl import logging
import numpy as np

from byol_jax.data import splits

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
_JPEG_MAGIC = b'\xff\xd8\xff'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
_TAIL_BYTES = 1024  # a JPEG ends in FFD9, a PNG in an IEND chunk; trailing
                    # junk after either is tolerated up to this many bytes.
# The split folders read when root/train/ exists (splits.generic_split maps
# the logical splits onto them).
SPLIT_DIRS = ('train', 'validation', 'valid', 'val', 'test')


@dataclasses.dataclass
class FolderSource(splits.Source):
  """Image files in class sub-folders; see `folder_source`.

  Attributes:
    root: the folder.
    class_names: label i is `class_names[i]` (sorted folder names).
    files: split -> np.ndarray of file paths (sorted by class, then path).
    labels: split -> int32 labels aligned with `files`.
    num_skipped: split -> number of undecodable files left out.
  """
  name: str
  num_classes: int
  root: str
  class_names: tuple[str, ...]
  files: Mapping[str, np.ndarray]
  labels: Mapping[str, np.ndarray]
  num_skipped: Mapping[str, int]

  def raw_splits(self):
    """The split names: the split folders under `root`.

    Returns:
      A tuple of raw split names, e.g. ('train', 'test'), with 'held_out'
      after `hold_out`.
    """
    return tuple(self.files)

  def num_examples(self, split):
    """Number of image files in a split.

    Args:
      split: a logical or raw split name (see `resolve_split`).

    Returns:
      The number of image files (images) in the resolved split.

    Raises:
      ValueError: the split does not resolve.
    """
    return len(self.files[self.resolve_split(split)])



def folder_source(root: str, *, validate_files: bool = True) -> FolderSource:
  """Image files in class sub-folders.

  Layout: `root/<class>/**/*.{jpg,jpeg,png}` (one split, 'train'), or, when
  `root/train/` exists, `root/<split>/<class>/...` for each of the split
  folders `SPLIT_DIRS` that exist (other folders there are logged as
  ignored). Symbolic links to folders and files are followed (each real
  folder listed once per class; links to nothing are left out, logged).
  Class -> label mapping: label i is the i-th class folder name of the train
  split in sorted (byte-wise, `sorted()`) order; other splits must have the
  same classes.

  Args:
    root: the folder.
    validate_files: read each file's first bytes and last 1 KiB once. Files
      that are not JPEG/PNG, or whose end marker is missing and that Pillow
      then fails to decode (truncated), are left out and counted in a warning.
      The streaming pipeline's `ignore_errors` also drops anything that still
      fails. False: the listing only (the in-memory path decodes every file
      anyway, memory_sources.in_memory_folder).

  Returns:
    A `FolderSource`.

  Raises:
    ValueError: the folder is missing, the layout is ambiguous (train/
      holds images, or a flat folder has a class named like a split of
      `SPLIT_DIRS`), a split holds no (decodable) image, the splits' class
      folders differ, or an image is above Pillow's size limit.
  """
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise ValueError(f'folder:{root} does not exist; point folder:<path> at a '
                     'directory holding one sub-folder of images per class')
  folders = _subfolders(root)
  if 'train' in folders:
    split_dirs = {s: os.path.join(root, s) for s in SPLIT_DIRS if s in folders}
    ignored = sorted(set(folders) - set(SPLIT_DIRS))
    if ignored:
      logging.warning('folder:%s: ignored the folders %s: the split folders '
                      'read are %s (one of %s)', root, ignored,
                      list(split_dirs), list(SPLIT_DIRS))
  else:
    split_dirs = {'train': root}
  _check_layout(root, split_dirs, folders)
  class_names = tuple(_subfolders(split_dirs['train']))
  files, labels, skipped = {}, {}, {}
  for split, path in split_dirs.items():
    names = _subfolders(path)
    if split != 'train' and names != list(class_names):
      raise ValueError(f'{path} has classes {names[:5]}... but train has '
                       f'{list(class_names)[:5]}...; every split needs the '
                       'same class folders')
    paths, ys = [], []
    for label, name in enumerate(class_names):
      found = _list_images(os.path.join(path, name), root)
      paths += found
      ys += [label] * len(found)
    if validate_files:
      ok = _validate(paths)
      bad = [p for p, good in zip(paths, ok) if not good]
      if bad:
        logging.warning('folder:%s split %r: skipped %d of %d files that are '
                        'not decodable JPEG/PNG images, e.g. %s', root, split,
                        len(bad), len(paths), bad[:3])
      paths = [p for p, good in zip(paths, ok) if good]
      ys = [y for y, good in zip(ys, ok) if good]
      skipped[split] = len(bad)
    else:
      skipped[split] = 0
    if not paths:
      raise ValueError(
          f'folder:{root} split {split!r} ({path}) holds no decodable '
          f'{"/".join(IMAGE_EXTENSIONS)} images in class sub-folders '
          f'(found classes: {list(class_names)[:10]}); expected '
          f'{path}/<class_name>/<image>.jpg')
    files[split] = np.asarray(paths)
    labels[split] = np.asarray(ys, np.int32)
  return FolderSource(f'folder:{root}', len(class_names), root, class_names,
                      files, labels, skipped)


def _subfolders(path) -> list[str]:
  """Sorted names of the folders (or links to folders) in path, not hidden."""
  with os.scandir(path) as entries:
    return sorted(e.name for e in entries
                  if e.is_dir() and not e.name.startswith('.'))


def _check_layout(root, split_dirs, folders):
  """Refuses a layout that reads as both flat and split folders."""
  train = split_dirs['train']
  with os.scandir(train) as entries:
    direct = [e.name for e in entries if _is_image(e)]
  if train != root and direct:
    raise ValueError(
        f'folder:{root} is ambiguous: {train} holds images ({min(direct)}, '
        f'...) where the split layout {root}/train/<class>/ expects class '
        'folders; if train is a class of a flat folder, rename it (e.g. to '
        f'train_class), else move those images into {train}/<class>/')
  named = [f for f in folders if f in SPLIT_DIRS]
  if train == root and named:
    raise ValueError(
        f'folder:{root} is ambiguous: it has a {named[0]}/ folder but no '
        f'train/, so {named[0]} would be read as a class of a flat folder; '
        f'for the split layout put the training images in {root}/train/'
        '<class>/, else rename that class folder')


def _is_image(entry) -> bool:
  # Hidden files (macOS '._x.jpg') are not images.
  return (entry.name.lower().endswith(IMAGE_EXTENSIONS) and
          not entry.name.startswith('.') and entry.is_file())


def _list_images(folder, root) -> list[str]:
  """Sorted image paths under folder, links followed, each real dir once."""
  found, seen, todo, dangling = [], set(), [folder], []
  while todo:
    path = todo.pop()
    real = os.path.realpath(path)
    if real in seen:  # a link back up (a cycle) or a second link to it
      continue
    seen.add(real)
    with os.scandir(path) as entries:  # sorted: the same links win each time
      for e in sorted(entries, key=lambda e: e.name):
        if e.name.startswith('.'):
          continue
        if e.is_dir():
          todo.append(e.path)
        elif _is_image(e):
          found.append(e.path)
        elif e.is_symlink() and not os.path.exists(e.path):
          dangling.append(e.path)
  if dangling:
    logging.warning('folder:%s: left out %d broken link(s), e.g. %s', root,
                    len(dangling), dangling[:3])
  return sorted(found)


def too_large(path: str, error: Exception) -> ValueError:
  """The one-line error for an image above Pillow's size limit.

  Args:
    path: the image file.
    error: Pillow's DecompressionBombError for it.

  Returns:
    A ValueError naming the file and the limit (PIL.Image.MAX_IMAGE_PIXELS).
  """
  import PIL.Image  # pylint: disable=g-import-not-at-top
  return ValueError(
      f'{path} is above Pillow\'s image size limit: {str(error).rstrip(".")} '
      f'(PIL.Image.MAX_IMAGE_PIXELS={PIL.Image.MAX_IMAGE_PIXELS}; Pillow '
      'refuses twice that); downscale or remove that image')


def _check_file(path) -> str:
  """'ok', 'bad' (not an image) or 'suspect' (end marker missing)."""
  try:
    with open(path, 'rb') as f:
      head = f.read(8)
      f.seek(0, os.SEEK_END)
      f.seek(max(0, f.tell() - _TAIL_BYTES))
      tail = f.read()
  except OSError:
    return 'bad'
  if head.startswith(_JPEG_MAGIC):
    return 'ok' if b'\xff\xd9' in tail else 'suspect'
  if head.startswith(_PNG_MAGIC):
    return 'ok' if b'IEND' in tail else 'suspect'
  return 'bad'


def _validate(paths) -> list[bool]:
  """Cheap header/trailer check; full decode only of files lacking an end."""
  check = lambda chunk: [_check_file(p) for p in chunk]
  start = time.perf_counter()
  status = check(paths[:512])
  if (time.perf_counter() - start) / max(1, len(status)) > 1e-4:
    # Slow (network) file system: threads hide the latency. On a local disk
    # one thread is fastest (60,000 CIFAR files in 0.7 s; GIL contention).
    chunks = [paths[i:i + 512] for i in range(512, len(paths), 512)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
      status += [s for part in pool.map(check, chunks) for s in part]
  else:
    status += check(paths[512:])
  ok = [s == 'ok' for s in status]
  suspects = [i for i, s in enumerate(status) if s == 'suspect']
  if suspects:
    import PIL.Image  # pylint: disable=g-import-not-at-top
    for i in suspects:  # rare: truncated files or trailing junk
      try:
        with PIL.Image.open(paths[i]) as im:
          im.convert('RGB')
        ok[i] = True
      except PIL.Image.DecompressionBombError as e:
        raise too_large(paths[i], e) from None
      except (OSError, ValueError, SyntaxError):
        pass
  return ok
