"""Image folders (`folder:<path>`): the listing, file checks and decoded cache.

Layout: root/<class>/**/*.{jpg,jpeg,png} (one split, 'train'), or, when
root/train/ exists, root/<split>/<class>/... for each of SPLIT_DIRS there.
Links are followed (each real folder once per class; links to nothing are
left out, logged). Label i is train's i-th class folder in sorted order.

The in-memory path decodes a folder once with Pillow (about 4 s for CIFAR-10's
60,000 JPEGs on one core) into one cache file per folder and side:

    <cache_dir>/<folder name>-<side>-<root hash>-<listing key>.npz
        'key'; per split: '<split>.images' uint8 [N, H, W, 3],
        '<split>.labels' int32 [N], '<split>.skipped' (files left out)

The key hashes every image file's relative path, size and mtime, the class
names, the side and FORMAT_VERSION: any change decodes the folder again (and
removes the stale file). A cache that does not read back whole (zip's CRC-32)
is rebuilt. It is written under a temporary name and renamed; the next start
on its host removes a killed writer's temporary file. Files that are not
decodable JPEG/PNG are skipped and counted; side S resizes the shorter side to
S (Pillow's antialiased bicubic) and keeps the central S x S square.
"""

import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import time

from absl import logging
import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
SPLIT_DIRS = ('train', 'validation', 'valid', 'val', 'test')
FORMAT_VERSION = 2
_FIELDS = ('images', 'labels', 'skipped')  # per split, in the cache


def list_folder(root: str, *, validate_files: bool = True):
  """(root, class names, {split: paths}, {split: labels}, {split: skipped}).

  validate_files: leave out (counted, logged) files that are not JPEG/PNG, or
  lack their end marker and do not decode; streaming then meets none.
  """
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise ValueError(
        f'folder:{root} does not exist; point folder:<path> at a directory '
        'holding one sub-folder of images per class'
    )
  folders = _subfolders(root)
  split_dirs = {s: os.path.join(root, s) for s in SPLIT_DIRS if s in folders}
  ignored = sorted(set(folders) - set(SPLIT_DIRS))
  if 'train' in folders and ignored:
    logging.warning(
        f'folder:{root}: ignored the folders {ignored}: the split folders '
        f'read are {list(split_dirs)} (one of {list(SPLIT_DIRS)})'
    )
  train = split_dirs.get('train')
  if train:  # a layout that reads as both flat and split folders: refused
    with os.scandir(train) as entries:
      direct = [e.name for e in entries if _is_image(e)]
    if direct:
      raise ValueError(
          f'folder:{root} is ambiguous: {train} holds images ({min(direct)}, '
          f'...) where the split layout {root}/train/<class>/ expects class '
          'folders; if train is a class of a flat folder, rename it (e.g. to '
          f'train_class), else move those images into {train}/<class>/'
      )
  elif split_dirs:
    named = min(split_dirs)
    raise ValueError(
        f'folder:{root} is ambiguous: it has a {named}/ folder but no '
        f'train/, so {named} would be read as a class of a flat folder; '
        f'for the split layout put the training images in {root}/train/'
        '<class>/, else rename that class folder'
    )
  split_dirs = split_dirs if 'train' in folders else {'train': root}
  class_names = tuple(_subfolders(split_dirs['train']))
  files, labels, skipped = {}, {}, {}
  for split, path in split_dirs.items():
    if _subfolders(path) != list(class_names):
      raise ValueError(
          f'{path} has classes {_subfolders(path)[:5]}... but train has '
          f'{list(class_names)[:5]}...; every split needs the same class '
          'folders'
      )
    found = [
        (p, y)
        for y, name in enumerate(class_names)
        for p in _list_images(os.path.join(path, name), root)
    ]
    paths = np.asarray([p for p, _ in found])
    ok = _validate(paths) if validate_files else [True] * len(paths)
    ok = np.asarray(ok, bool)
    if not ok.all():
      logging.warning(
          f'folder:{root} split {split!r}: skipped {(~ok).sum()} of '
          f'{len(ok)} files that are not decodable JPEG/PNG images, e.g. '
          f'{paths[~ok][:3].tolist()}'
      )
    if not ok.any():
      raise ValueError(
          f'folder:{root} split {split!r} ({path}) holds no decodable '
          f'{"/".join(IMAGE_EXTENSIONS)} images in class sub-folders (found '
          f'classes: {list(class_names)[:10]}); expected '
          f'{path}/<class_name>/<image>.jpg'
      )
    files[split] = paths[ok]
    labels[split] = np.asarray([y for _, y in found], np.int32)[ok]
    skipped[split] = int((~ok).sum())
  return root, class_names, files, labels, skipped


def _subfolders(path) -> list[str]:
  """Sorted names of the folders (or links to folders) in path, not hidden."""
  with os.scandir(path) as entries:
    return sorted(
        e.name for e in entries if e.is_dir() and not e.name.startswith('.')
    )


def _is_image(entry) -> bool:
  # Hidden files (macOS '._x.jpg') are not images.
  return (
      entry.name.lower().endswith(IMAGE_EXTENSIONS)
      and not entry.name.startswith('.')
      and entry.is_file()
  )


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
    logging.warning(
        f'folder:{root}: left out {len(dangling)} broken link(s), e.g. '
        f'{dangling[:3]}'
    )
  return sorted(found)


def _check_file(path) -> str:
  """'ok', 'bad' (not a JPEG/PNG) or 'suspect' (its end marker is missing)."""
  try:
    with open(path, 'rb') as f:
      head = f.read(8)
      f.seek(max(0, f.seek(0, os.SEEK_END) - 1024))
      tail = f.read()
  except OSError:
    return 'bad'
  # A JPEG ends in FFD9, a PNG in an IEND chunk; junk after either is
  # tolerated up to 1 KiB.
  for magic, end in (
      (b'\xff\xd8\xff', b'\xff\xd9'),
      (b'\x89PNG\r\n\x1a\n', b'IEND'),
  ):
    if head.startswith(magic):
      return 'ok' if end in tail else 'suspect'
  return 'bad'


def _validate(paths) -> list[bool]:
  """Cheap header/trailer check; full decode only of files lacking an end."""
  start = time.perf_counter()
  status = [_check_file(p) for p in paths[:512]]
  if (time.perf_counter() - start) / max(1, len(status)) > 1e-4:
    # Slow (network) file system: threads hide the latency. On a local disk
    # one thread is fastest (60,000 CIFAR files in 0.7 s; GIL contention).
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
      status += pool.map(_check_file, paths[512:])
  else:
    status += map(_check_file, paths[512:])
  # Rare: a truncated file, or junk after the end: decoded to be sure.
  return [
      s == 'ok' or s == 'suspect' and _decode(p, 0) is not None
      for p, s in zip(paths, status)
  ]


def image_shape(files) -> tuple[int, int] | None:
  """(height, width) of the first decodable JPEG/PNG among files, else None."""
  for path in files:
    if (x := _decode(path, 0)) is not None:
      return x.shape[:2]
  return None


def square(image, side: int) -> np.ndarray:
  """uint8 [side, side, 3]: shorter side resized to side (bicubic), centre."""
  import PIL.Image  # pylint: disable=g-import-not-at-top

  if isinstance(image, np.ndarray):
    image = PIL.Image.fromarray(image)
  scale = side / min(image.width, image.height)
  w = max(side, round(image.width * scale))
  h = max(side, round(image.height * scale))
  image = image.resize((w, h), PIL.Image.BICUBIC)
  x0, y0 = (w - side) // 2, (h - side) // 2
  return np.asarray(image.crop((x0, y0, x0 + side, y0 + side)), np.uint8)


def _decode(path: str, side: int) -> np.ndarray | None:
  """uint8 [H, W, 3] of one JPEG/PNG, None when it is not a decodable one."""
  import PIL.Image  # pylint: disable=g-import-not-at-top

  try:
    with PIL.Image.open(path) as im:
      if im.format not in ('JPEG', 'PNG'):  # what tf.data decodes, too
        return None
      if im.mode.startswith('I'):  # 16-bit grey: Pillow's RGB saturates
        grey = np.clip(np.asarray(im, np.int64), 0, 2**16 - 1) >> 8
        im = PIL.Image.fromarray(  # the high byte, as libpng's 16->8 strip
            np.repeat(grey.astype(np.uint8)[..., None], 3, -1)
        )
      else:
        im = im.convert('RGB')  # decodes; a truncated file raises here
  except PIL.Image.DecompressionBombError as e:
    raise ValueError(
        f'{path} is above Pillow\'s image size limit: {str(e).rstrip(".")} '
        f'(PIL.Image.MAX_IMAGE_PIXELS={PIL.Image.MAX_IMAGE_PIXELS}; Pillow '
        'refuses twice that); downscale or remove that image'
    ) from None
  except (OSError, ValueError, SyntaxError):
    return None
  return square(im, side) if side else np.asarray(im, np.uint8)


def _decode_split(root, split, paths, side, num_threads):
  """The decoded images of one split's paths, None where not decodable."""
  cores = (
      len(os.sched_getaffinity(0))
      if hasattr(os, 'sched_getaffinity')
      else os.cpu_count() or 1
  )
  # Pillow releases the GIL while decoding. Side 0: the first image of
  # another size stops the split there, before the rest is decoded
  # (open_source's memory estimate assumes the first file's size).
  pool = concurrent.futures.ThreadPoolExecutor(num_threads or min(16, cores))
  try:
    decoded, first = [], None
    for x in pool.map(lambda p: _decode(p, side), paths):
      first = first or (None if x is None else x.shape)
      if x is not None and x.shape != first:
        raise ValueError(
            f'folder:{root} split {split!r}: images have different sizes '
            f'(e.g. {first[1]}x{first[0]} and {x.shape[1]}x{x.shape[0]}); set '
            '--config.data.cache_side=N to hold them at N x N (shorter side '
            'resized to N, centre square), or stream the folder with '
            '--config.data.max_in_memory_mb=0'
        )
      decoded.append(x)
  finally:
    pool.shutdown(cancel_futures=True)
  if first is None:
    raise ValueError(
        f'folder:{root} split {split!r} holds no decodable JPEG/PNG images '
        f'({len(paths)} files tried, e.g. {list(paths[:3])})'
    )
  return decoded


def _listing_key(listing, side: int) -> str:
  """sha256 of every file's relative path, size and mtime, classes and side."""
  head = [FORMAT_VERSION, int(side), list(listing.class_names)]
  h = hashlib.sha256(json.dumps(head).encode())
  for split in sorted(listing.files):
    h.update(f'\0split {split}\0'.encode())
    for path in listing.files[split]:
      try:
        st = os.stat(path)
        size, mtime = st.st_size, st.st_mtime_ns
      except OSError:  # vanished, or a dangling link: decoding skips it
        size = mtime = -1
      rel = os.path.relpath(path, listing.root)
      h.update(f'{rel}\0{size}\0{mtime}\n'.encode())
  return h.hexdigest()


def _read(path: str, key: str, splits):
  """{field: {split: array}} of the cache at path if whole, else None."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path) as z:
      z = dict(z)  # reads every member, so zip checks every CRC-32
    if str(z['key']) != key:
      raise ValueError('it was written for another listing')
    return {f: {s: z[f'{s}.{f}'] for s in splits} for f in _FIELDS}
  except Exception as e:  # pylint: disable=broad-except
    # Whatever does not read back whole (a bad CRC-32, a missing split...).
    logging.warning(
        f'Image cache {path} is incomplete or corrupt ({e}); rebuilding it.'
    )
    return None


def _write(path: str, key: str, out):
  """Writes the cache under a temporary name, then renames it into place."""
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(  # named by host and pid: _remove_dead_writers
      prefix=f'.tmp-{socket.gethostname()}-{os.getpid()}-', dir=directory
  )
  try:
    with os.fdopen(fd, 'wb') as f:
      arrays = {f'{s}.{f}': out[f][s] for f in _FIELDS for s in out[f]}
      np.savez(f, key=np.asarray(key), **arrays)
    os.replace(tmp, path)
  except BaseException:  # a full disk: leave nothing half-written behind
    _remove(tmp)
    raise
  name = os.path.basename(path)
  prefix = name.rsplit('-', 1)[0] + '-'  # this folder and side
  for entry in os.listdir(directory):  # stale caches of other listings
    if entry.startswith(prefix) and entry != name:
      _remove(os.path.join(directory, entry))


def _remove(path: str):
  with contextlib.suppress(FileNotFoundError):  # another process was first
    os.remove(path)


def _remove_dead_writers(cache_dir: str):
  """Removes the temporary files of this host's writers that died."""
  ours = re.compile(rf'\.tmp-{re.escape(socket.gethostname())}-(\d+)-')
  try:
    entries = os.listdir(cache_dir)
  except OSError:  # none yet, or unreadable
    return
  for match in filter(None, map(ours.match, entries)):
    try:
      os.kill(int(match.group(1)), 0)  # signal 0: only asks if it lives
    except ProcessLookupError:
      _remove(os.path.join(cache_dir, match.string))
    except PermissionError:  # alive: another user's
      pass


def arrays(listing, *, side=0, cache_dir='', num_threads=None):
  """A listed folder (a FolderSource) as uint8 arrays: cached, else decoded.

  Returns ({split: images}, {split: labels}, {split: files skipped}, the
  cache file or '' when it could not be written). cache_dir '':
  $XDG_CACHE_HOME (else ~/.cache)/byol_jax/folders.
  """
  root = listing.root
  xdg = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  cache_dir = cache_dir or os.path.join(xdg, 'byol_jax', 'folders')
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
  _remove_dead_writers(cache_dir)
  key = _listing_key(listing, side)
  name = re.sub(r'[^A-Za-z0-9_.-]+', '_', os.path.basename(root)) or 'root'
  root_hash = hashlib.sha256(root.encode()).hexdigest()[:8]
  path = os.path.join(cache_dir, f'{name}-{side}-{root_hash}-{key[:16]}.npz')
  out = _read(path, key, list(listing.files))
  how = f'read from {path}'
  if out is None:
    out = {f: {} for f in _FIELDS}
    for split, paths in listing.files.items():
      decoded = _decode_split(root, split, list(paths), side, num_threads)
      keep = [i for i, x in enumerate(decoded) if x is not None]
      out['images'][split] = np.stack([decoded[i] for i in keep])
      out['labels'][split] = np.asarray(listing.labels[split], np.int32)[keep]
      out['skipped'][split] = np.asarray(len(paths) - len(keep))
    try:
      _write(path, key, out)
      how = f'decoded and cached in {path}'
    except OSError as e:  # read-only or full: the run goes on, uncached
      logging.warning(
          f'folder:{root} could not be cached in {cache_dir} ({e}); using the '
          'decoded images for this run only (the next start decodes them '
          'again): free space there or set --config.data.cache_dir to a '
          'writable directory.'
      )
      path, how = '', 'decoded, not cached'
  skipped = {s: int(n) for s, n in out['skipped'].items()}
  for split, x in out['images'].items():
    n = skipped[split]
    (logging.warning if n else logging.info)(
        f'folder:{root} split {split!r}: {len(x)} of {len(x) + n} files held '
        f'in memory as {x.shape[1]}x{x.shape[2]} uint8 '
        f'({x.nbytes / 2**20:.1f} MB), {n} skipped (not decodable JPEG/PNG); '
        f'{how}'
    )
  return out['images'], out['labels'], skipped, path
