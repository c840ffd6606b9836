"""Image folders: root/<class>/**/*.{jpg,jpeg,png} ('train') or, given train/,
root/<split>/<class>/...; label i: train's i-th class folder, sorted. Decoded
once (CIFAR-10's 60,000 JPEGs: 4 s on one core) into a cached .npz."""

import concurrent.futures
import hashlib
import json
import os
import pathlib
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
_END_MARKERS = {b'\xff\xd8\xff': b'\xff\xd9', b'\x89PNG\r\n\x1a\n': b'IEND'}


def list_folder(root: str, *, validate_files: bool = True):
  """(root, classes, {split: paths / labels / number of undecodable files})."""
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise ValueError(
        f'folder:{root} does not exist; point folder:<path> at a directory '
        'holding one sub-folder of images per class'
    )
  folders = _subfolders(root)
  split_dirs = {s: os.path.join(root, s) for s in SPLIT_DIRS if s in folders}
  train = split_dirs.get('train')
  if train:  # a layout that reads as both flat and split folders: refused
    if ignored := sorted(set(folders) - set(SPLIT_DIRS)):
      logging.warning(
          f'folder:{root}: ignored the folders {ignored}: the split folders '
          f'read are {list(split_dirs)} (one of {list(SPLIT_DIRS)})'
      )
    if direct := [n for n in os.listdir(train) if _is_image(f'{train}/{n}')]:
      raise ValueError(
          f'folder:{root} is ambiguous: {train} holds images ({min(direct)}, '
          '...), not class folders; if train is a class, rename it, else '
          f'move those images into {train}/<class>/'
      )
  elif split_dirs:
    named = min(split_dirs)
    raise ValueError(
        f'folder:{root} is ambiguous: it has a {named}/ folder but no train/;'
        f' for split folders add {root}/train/<class>/, else rename that class'
        ' folder'
    )
  else:
    split_dirs = {'train': root}
  class_names = tuple(_subfolders(split_dirs['train']))
  files, labels, skipped = {}, {}, {}
  for split, path in split_dirs.items():
    if _subfolders(path) != list(class_names):
      raise ValueError(
          f'{path} has classes {_subfolders(path)[:5]}... but train has '
          f'{list(class_names)[:5]}...; every split needs the same class '
          'folders'
      )
    found = [_list_images(os.path.join(path, c), root) for c in class_names]
    paths = np.asarray(sum(found, []))
    ok = np.ones(len(paths), bool)
    if validate_files:
      start = time.perf_counter()
      ok[:512] = [_file_ok(p) for p in paths[:512]]
      # Slow (network) file system: threads hide the latency. On a local disk
      # one thread is fastest (60,000 CIFAR files in 0.7 s; GIL contention).
      slow = time.perf_counter() - start > 1e-4 * len(paths[:512])
      with concurrent.futures.ThreadPoolExecutor(16 if slow else 1) as pool:
        ok[512:] = list(pool.map(_file_ok, paths[512:]))
    if not ok.all():
      logging.warning(
          f'folder:{root} split {split!r}: skipped {(~ok).sum()} of '
          f'{len(ok)} files that are not decodable JPEG/PNG images, e.g. '
          f'{paths[~ok][:3].tolist()}'
      )
    if not ok.any():
      raise ValueError(
          f'folder:{root} split {split!r} holds no decodable JPEG/PNG images '
          f'in class folders ({list(class_names)[:10]}); expected '
          f'{path}/<class_name>/<image>.jpg'
      )
    files[split] = paths[ok]
    labels[split] = np.repeat(
        np.arange(len(found), dtype=np.int32), [len(f) for f in found]
    )[ok]
    skipped[split] = int((~ok).sum())
  return root, class_names, files, labels, skipped


def _subfolders(path) -> list[str]:
  """Sorted names of the folders (or links to folders) in path, not hidden."""
  return sorted(
      e.name for e in os.scandir(path) if e.is_dir() and e.name[0] != '.'
  )


def _is_image(path) -> bool:  # hidden ones (macOS '._x.jpg') are not
  name = os.path.basename(path)
  ext = name.lower().endswith(IMAGE_EXTENSIONS)
  return ext and name[0] != '.' and os.path.isfile(path)


def _list_images(folder, root) -> list[str]:
  """Sorted image paths under folder, links followed, each real dir once."""
  found, seen, dangling = [], set(), []
  for path, dirs, names in os.walk(folder, followlinks=True):
    real = os.path.realpath(path)
    if real in seen:  # a link back up (a cycle) or a second link to it
      dirs.clear()
      continue
    seen.add(real)
    dirs[:] = sorted(d for d in dirs if d[0] != '.')  # the same links win
    for p in (os.path.join(path, n) for n in names if n[0] != '.'):
      if _is_image(p):
        found.append(p)
      elif os.path.islink(p) and not os.path.exists(p):
        dangling.append(p)
  if dangling:
    logging.warning(
        f'folder:{root}: left out {len(dangling)} broken link(s), e.g. '
        f'{dangling[:3]}'
    )
  return sorted(found)


def _file_ok(path) -> bool:
  """A JPEG/PNG header and end marker (a file lacking its end: decoded)."""
  try:
    with open(path, 'rb') as f:
      head = f.read(8)
      f.seek(max(0, f.seek(0, os.SEEK_END) - 1024))
      tail = f.read()
  except OSError:
    return False
  # Junk after the end marker: tolerated up to 1 KiB, else (rare) decoded.
  for magic, end in _END_MARKERS.items():
    if head.startswith(magic):
      return end in tail or decode(path, 0) is not None
  return False


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


def decode(path: str, side: int) -> np.ndarray | None:
  """uint8 [H, W, 3] of one JPEG/PNG, None when it is not a decodable one."""
  import PIL.Image  # pylint: disable=g-import-not-at-top

  try:
    with PIL.Image.open(path) as im:
      if im.format not in ('JPEG', 'PNG'):  # what tf.data decodes, too
        return None
      if im.mode.startswith('I'):  # 16-bit grey: Pillow's RGB saturates
        grey = np.clip(np.asarray(im, np.int64), 0, 2**16 - 1) >> 8
        im = np.repeat(grey.astype(np.uint8)[..., None], 3, -1)  # as libpng
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


def stack(what: str, images) -> tuple[np.ndarray, list[int]]:
  """(uint8 [N, H, W, 3], indices kept) of images (None: skipped), one size."""
  kept, keep = [], []
  for i, x in enumerate(images):  # the first of another size stops here
    if x is not None and kept and x.shape != kept[0].shape:
      (h, w), (h2, w2) = kept[0].shape[:2], x.shape[:2]
      raise ValueError(
          f'{what}: images have different sizes (e.g. {w}x{h} and {w2}x{h2}); '
          'set --config.data.cache_side=N (N x N centre squares), or stream it'
          ' with --config.data.max_in_memory_mb=0'
      )
    if x is not None:
      kept.append(x)
      keep.append(i)
  if not kept:
    raise ValueError(f'{what} holds no decodable JPEG/PNG images')
  return np.stack(kept).astype(np.uint8), keep


def _write(path: str, key: str, out):
  """Writes the cache under a temporary name, renames it, drops stale ones."""
  directory, name = os.path.split(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(  # named by host and pid: see below
      prefix=f'.tmp-{socket.gethostname()}-{os.getpid()}-', dir=directory
  )
  try:
    with os.fdopen(fd, 'wb') as f:
      arrays = {f'{s}.{f}': v for s in out for f, v in zip(_FIELDS, out[s])}
      np.savez(f, key=np.asarray(key), **arrays)
    os.replace(tmp, path)
  except BaseException:  # a full disk: leave nothing half-written behind
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  prefix = name.rsplit('-', 1)[0] + '-'  # this folder and side
  ours = re.compile(rf'\.tmp-{re.escape(socket.gethostname())}-(\d+)-')
  for entry in pathlib.Path(directory).iterdir():  # missing_ok: a race
    if entry.name.startswith(prefix) and entry.name != name:  # stale listing
      entry.unlink(missing_ok=True)
    elif match := ours.match(entry.name):  # a temporary file of this host's
      try:  # removed if its writer died (signal 0 only asks if it lives)
        os.kill(int(match.group(1)), 0)
      except ProcessLookupError:
        entry.unlink(missing_ok=True)
      except PermissionError:  # alive: another user's
        pass


def arrays(listing, *, side=0, cache_dir='', num_threads=None):
  """({split: images / labels / files skipped}, cache file or '') of listing."""
  root = listing.root
  xdg = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  cache_dir = cache_dir or os.path.join(xdg, 'byol_jax', 'folders')
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
  head = json.dumps([FORMAT_VERSION, int(side), list(listing.class_names)])
  h = hashlib.sha256(head.encode())  # and every file's path, size and mtime
  for split, paths in sorted(listing.files.items()):
    h.update(f'\0split {split}\0'.encode())
    for p in paths:
      try:
        st = os.stat(p)
        size, mtime = st.st_size, st.st_mtime_ns
      except OSError:  # vanished, or a dangling link: decoding skips it
        size = mtime = -1
      h.update(f'{os.path.relpath(p, root)}\0{size}\0{mtime}\n'.encode())
  key = h.hexdigest()
  name = re.sub(r'[^A-Za-z0-9_.-]+', '_', os.path.basename(root)) or 'root'
  root_hash = hashlib.sha256(root.encode()).hexdigest()[:8]
  path = os.path.join(cache_dir, f'{name}-{side}-{root_hash}-{key[:16]}.npz')
  out, how = None, f'read from {path}'
  if os.path.exists(path):
    try:
      with np.load(path) as z:
        z = dict(z)  # reads every member, so zip checks every CRC-32
      if str(z['key']) != key:
        raise ValueError('it was written for another listing')
      out = {s: [z[f'{s}.{f}'] for f in _FIELDS] for s in listing.files}
    except Exception as e:  # pylint: disable=broad-except
      logging.warning(
          f'Image cache {path} is incomplete or corrupt ({e}); rebuilding it.'
      )
  if out is None:
    # Pillow releases the GIL. Side 0: an image of another size stops the split
    # (open_source's memory estimate takes the first file's size).
    cores = min(16, os.cpu_count() or 1)
    pool, out = concurrent.futures.ThreadPoolExecutor(num_threads or cores), {}
    try:
      for split, paths in listing.files.items():
        decoded = pool.map(lambda p: decode(p, side), paths)
        images, keep = stack(f'folder:{root} split {split!r}', decoded)
        labels = np.asarray(listing.labels[split], np.int32)[keep]
        out[split] = images, labels, len(paths) - len(keep)
    finally:
      pool.shutdown(cancel_futures=True)
    try:
      _write(path, key, out)
      how = f'decoded and cached in {path}'
    except OSError as e:  # read-only or full: the run goes on, uncached
      logging.warning(
          f'folder:{root} could not be cached in {cache_dir} ({e}); decoded '
          'for this run only: free space there or set --config.data.cache_dir'
          ' to a writable directory.'
      )
      path, how = '', 'decoded, not cached'
  for split, (x, _, n) in out.items():
    (logging.warning if n else logging.info)(
        f'folder:{root} split {split!r}: {len(x)} of {len(x) + n} files held '
        f'in memory as {x.shape[1]}x{x.shape[2]} uint8 '
        f'({x.nbytes / 2**20:.1f} MB), {n} skipped (not decodable JPEG/PNG); '
        f'{how}'
    )
  images, labels, skipped = (dict(zip(out, v)) for v in zip(*out.values()))
  return images, labels, {s: int(n) for s, n in skipped.items()}, path
