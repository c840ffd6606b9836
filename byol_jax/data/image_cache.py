"""Image folders decoded once with Pillow and cached on disk as uint8 arrays.

The in-memory path (`in_memory.py`) holds a folder as one uint8 array per
split. Decoding is the slow part (about 4 s for CIFAR-10's 60,000 JPEGs on
one core), so the arrays are written once under `cache_dir` and read back by
later runs:

    <cache_dir>/<folder name>-<side>-<key[:16]>/
        manifest.json        key, folder, side; per split: shape, skipped
                             files and the sha256 of each array's bytes
        <split>.images.npy   uint8 [N, H, W, 3]
        <split>.labels.npy   int32 [N]

`key` is a sha256 over the folder's listing (every image file's relative
path, size in bytes and mtime in ns, per split), its class names, the cache
side and `FORMAT_VERSION`. A changed, added or removed file changes the key,
so the cache is rebuilt; a cache whose arrays do not hash to the manifest's
sha256 (truncated, corrupted, half-deleted) is rebuilt, never used. After a
rebuild the stale caches of the same folder and side are removed. A cache
is written to a temporary directory and renamed into place, so a reader
never sees half of one; the temporary directory of a writer that was killed
(SIGTERM, SIGKILL) is removed by the next start on that host.

Decoding: Pillow, converted to RGB. A file that Pillow cannot decode
(truncated, not an image) or that is not a JPEG or PNG whatever its
extension is skipped and counted, as the streaming path's validation
(`sources.folder_source`) does; an image above Pillow's decompression-bomb
limit (twice PIL.Image.MAX_IMAGE_PIXELS) stops the start with one line
naming it. `side` 0 keeps the images' own size (they must all share it:
CIFAR-10 and STL-10 do); side S > 0 resizes each image's shorter side to S
(Pillow's antialiased bicubic) and keeps the central S x S square
(Imagenette at 160 px, say). No TensorFlow.
"""
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from typing import Mapping, Sequence

from absl import logging
import numpy as np

from byol_jax.data import folder

FORMAT_VERSION = 1
_MANIFEST = 'manifest.json'
_FORMATS = ('JPEG', 'PNG')  # what the streaming path decodes, too


@dataclasses.dataclass
class FolderArrays:
  """A folder's decoded splits.

  Attributes:
    images: split -> uint8 [N, H, W, 3].
    labels: split -> int32 [N] (the decodable files' labels, in listing
      order).
    num_skipped: split -> number of files left out (not decodable JPEG/PNG).
    path: the cache directory they were read from or written to ('' when
      it could not be written: read-only or full).
    from_cache: True when read from an existing cache, False when decoded.
  """
  images: Mapping[str, np.ndarray]
  labels: Mapping[str, np.ndarray]
  num_skipped: Mapping[str, int]
  path: str
  from_cache: bool


def default_cache_dir() -> str:
  """Where decoded image folders are cached by default.

  Returns:
    $XDG_CACHE_HOME/byol_jax/folders, else ~/.cache/byol_jax/folders (a
    path string; the directory is not created here).
  """
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'byol_jax', 'folders')


def listing_key(root: str, files: Mapping[str, Sequence[str]],
                class_names: Sequence[str], side: int) -> str:
  """sha256 of the folder's listing (paths, sizes, mtimes) and the side.

  Args:
    root: the folder.
    files: split -> image file paths (under root).
    class_names: the label order.
    side: the cache side (0: native).

  Returns:
    64 hex digits. A file that cannot be stat'ed (a dangling link, one that
    vanished) counts with size and mtime -1: decoding then skips it.
  """
  h = hashlib.sha256()
  h.update(json.dumps([FORMAT_VERSION, int(side), list(class_names)]).encode())
  for split in sorted(files):
    h.update(f'\0split {split}\0'.encode())
    for path in files[split]:
      try:
        st = os.stat(path)
        size, mtime = st.st_size, st.st_mtime_ns
      except OSError:
        size = mtime = -1
      h.update(f'{os.path.relpath(path, root)}\0{size}\0{mtime}\n'.encode())
  return h.hexdigest()


def image_shape(files: Sequence[str]) -> tuple[int, int] | None:
  """(height, width) of the first JPEG/PNG file Pillow can read a header of.

  Every file is tried in turn (only the undecodable ones before the first
  image cost a look): a folder whose first files are not images is sized
  by the images that follow.

  Args:
    files: image file paths, in the order to try them.

  Returns:
    (height, width) in pixels of the first file whose header Pillow reads
    as JPEG or PNG; None when no file has a readable header.

  Raises:
    ValueError: a file tried is above Pillow's image size limit.
  """
  import PIL.Image  # pylint: disable=g-import-not-at-top
  for path in files:
    try:
      with PIL.Image.open(path) as im:
        if im.format not in _FORMATS:
          continue
        return im.height, im.width
    except PIL.Image.DecompressionBombError as e:
      raise folder.too_large(path, e) from None
    except (OSError, ValueError, SyntaxError):
      continue
  return None


def _sha256(array: np.ndarray) -> str:
  return hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast('B')
                        ).hexdigest()


def _decode(path: str, side: int) -> np.ndarray | None:
  """uint8 [H, W, 3] of one file, or None when it is not a decodable image."""
  import PIL.Image  # pylint: disable=g-import-not-at-top
  try:
    with PIL.Image.open(path) as im:
      if im.format not in _FORMATS:
        return None
      if im.mode.startswith('I'):  # 16-bit grey: Pillow's RGB saturates
        grey = np.clip(np.asarray(im, np.int64), 0, 2**16 - 1) >> 8
        im = PIL.Image.fromarray(  # the high byte, as libpng's 16->8 strip
            np.repeat(grey.astype(np.uint8)[..., None], 3, -1))
      else:
        im = im.convert('RGB')  # decodes; a truncated file raises here
  except PIL.Image.DecompressionBombError as e:
    raise folder.too_large(path, e) from None
  except (OSError, ValueError, SyntaxError):
    return None
  return square(im, side) if side else np.asarray(im, np.uint8)


def square(image, side: int) -> np.ndarray:
  """The central side x side square after resizing the shorter side to side.

  Args:
    image: a PIL RGB image, or uint8 [H, W, 3].
    side: output side in pixels.

  Returns:
    uint8 [side, side, 3]; Pillow's bicubic resize (antialiased when
    shrinking).
  """
  import PIL.Image  # pylint: disable=g-import-not-at-top
  if isinstance(image, np.ndarray):
    image = PIL.Image.fromarray(image)
  scale = side / min(image.width, image.height)
  w = max(side, round(image.width * scale))
  h = max(side, round(image.height * scale))
  image = image.resize((w, h), PIL.Image.BICUBIC)
  x0, y0 = (w - side) // 2, (h - side) // 2
  return np.asarray(image.crop((x0, y0, x0 + side, y0 + side)), np.uint8)


def _decode_split(root, split, paths, labels, side, num_threads):
  """(images [N, H, W, 3] uint8, labels [N], skipped paths) of one split."""
  threads = num_threads or min(16, len(os.sched_getaffinity(0))
                               if hasattr(os, 'sched_getaffinity')
                               else os.cpu_count() or 1)
  # Pillow releases the GIL while decoding. Side 0: the first image of
  # another size than the first one stops the split there, before the rest
  # is decoded (plan.py's memory estimate assumes the first file's size).
  pool = concurrent.futures.ThreadPoolExecutor(threads)
  try:
    decoded, first = [], None
    for x in pool.map(lambda p: _decode(p, side), paths):
      if x is not None and first is None:
        first = x.shape
      elif x is not None and x.shape != first:
        raise _mixed_sizes(root, split, first, x.shape)
      decoded.append(x)
  finally:
    pool.shutdown(cancel_futures=True)
  keep = [i for i, x in enumerate(decoded) if x is not None]
  bad = [paths[i] for i, x in enumerate(decoded) if x is None]
  if not keep:
    raise ValueError(f'folder:{root} split {split!r} holds no decodable '
                     f'JPEG/PNG images ({len(paths)} files tried, e.g. '
                     f'{list(paths[:3])})')
  images = np.stack([decoded[i] for i in keep])
  return images, np.asarray(labels, np.int32)[keep], bad


def _mixed_sizes(root, split, first, other) -> ValueError:
  return ValueError(
      f'folder:{root} split {split!r}: images have different sizes (e.g. '
      f'{first[1]}x{first[0]} and {other[1]}x{other[0]}); set '
      '--config.data.cache_side=N to hold them at N x N (shorter side '
      'resized to N, centre square), or stream the folder with '
      '--config.data.max_in_memory_mb=0')


def _cache_name(root: str, side: int, key: str) -> str:
  name = re.sub(r'[^A-Za-z0-9_.-]+', '_', os.path.basename(root)) or 'root'
  return f'{name}-{side}-{key[:16]}'


def _read(path: str, key: str, splits: Sequence[str]):
  """The cached arrays of `splits` at `path` if whole and intact, else None."""
  manifest = os.path.join(path, _MANIFEST)
  if not os.path.isdir(path):
    return None
  try:
    with open(manifest) as f:
      meta = json.load(f)
    if not isinstance(meta, dict):
      raise ValueError('the manifest is not a JSON object')
    if meta.get('key') != key or meta.get('version') != FORMAT_VERSION:
      raise ValueError('the manifest is for another listing')
    if (not isinstance(meta.get('splits'), dict) or
        sorted(meta['splits']) != sorted(splits)):
      raise ValueError(f'the manifest\'s splits are not {sorted(splits)}')
    images, labels, skipped = {}, {}, {}
    for split, info in meta['splits'].items():
      x = np.load(os.path.join(path, f'{split}.images.npy'))
      y = np.load(os.path.join(path, f'{split}.labels.npy'))
      if (_sha256(x) != info['images_sha256'] or
          _sha256(y) != info['labels_sha256'] or
          list(x.shape) != info['shape'] or x.dtype != np.uint8):
        raise ValueError(f'split {split!r} does not match its sha256')
      images[split], labels[split] = x, y
      skipped[split] = int(info['num_skipped'])
  except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
    logging.warning('Image cache %s is incomplete or corrupt (%s); '
                    'rebuilding it.', path, e)
    return None
  return images, labels, skipped


def _write(cache_dir, name, key, root, side, images, labels, skipped,
           examples) -> str:
  """Writes the cache atomically; returns its directory."""
  os.makedirs(cache_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(  # named by host and process: _remove_dead_writers
      prefix=f'.tmp-{socket.gethostname()}-{os.getpid()}-', dir=cache_dir)
  try:
    splits = {}
    for split in images:
      np.save(os.path.join(tmp, f'{split}.images.npy'), images[split])
      np.save(os.path.join(tmp, f'{split}.labels.npy'), labels[split])
      splits[split] = dict(shape=list(images[split].shape),
                           images_sha256=_sha256(images[split]),
                           labels_sha256=_sha256(labels[split]),
                           num_skipped=skipped[split],
                           skipped_examples=examples[split][:10])
    with open(os.path.join(tmp, _MANIFEST), 'w') as f:
      json.dump(dict(version=FORMAT_VERSION, key=key, root=root, side=side,
                     splits=splits), f, indent=1)
  except BaseException:  # a full disk: leave nothing half-written behind
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  final = os.path.join(cache_dir, name)
  if os.path.isdir(final):  # corrupt or half-written: replaced
    shutil.rmtree(final, ignore_errors=True)
  try:
    os.rename(tmp, final)
  except OSError:  # another process wrote it first: theirs is the same
    shutil.rmtree(tmp, ignore_errors=True)
  prefix = name.rsplit('-', 1)[0] + '-'
  for entry in os.listdir(cache_dir):  # stale caches of this folder and side
    stale = os.path.join(cache_dir, entry)
    if entry.startswith(prefix) and entry != name and _is_cache_of(stale,
                                                                    root):
      shutil.rmtree(stale, ignore_errors=True)
  return final


def _remove_dead_writers(cache_dir: str):
  """Removes the temporary directories of this host's writers that died."""
  try:
    entries = os.listdir(cache_dir)
  except OSError:
    return
  ours = re.compile(rf'\.tmp-{re.escape(socket.gethostname())}-(\d+)-')
  for match in filter(None, map(ours.match, entries)):
    try:
      os.kill(int(match.group(1)), 0)  # signal 0: only asks if it lives
    except ProcessLookupError:
      shutil.rmtree(os.path.join(cache_dir, match.string), ignore_errors=True)
    except PermissionError:  # alive: another user's
      pass


def _is_cache_of(path: str, root: str) -> bool:
  try:
    with open(os.path.join(path, _MANIFEST)) as f:
      return json.load(f).get('root') == root
  except (OSError, ValueError):
    return False


def folder_arrays(root: str, files: Mapping[str, Sequence[str]],
                  labels: Mapping[str, np.ndarray],
                  class_names: Sequence[str], *, side: int = 0,
                  cache_dir: str = '',
                  num_threads: int | None = None) -> FolderArrays:
  """A folder's splits as uint8 arrays: from the cache, else decoded once.

  Args:
    root: the folder (absolute path).
    files: split -> image file paths, in label order (sources.folder_source's
      listing, without validation).
    labels: split -> int labels aligned with `files`.
    class_names: label i's folder name (part of the cache key).
    side: 0 to keep the images' size (all must share it), else S: shorter
      side resized to S, central S x S square.
    cache_dir: where caches live ('' for `default_cache_dir()`).
    num_threads: decoding threads (default: the usable cores, at most 16).

  Returns:
    A `FolderArrays`. The number of skipped files per split is logged (a
    warning when there are any), whether decoded now or read from the cache.

  Raises:
    ValueError: a split holds no decodable image, (side 0) images of
      different sizes, or an image above Pillow's size limit.
  """
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or
                                                 default_cache_dir()))
  _remove_dead_writers(cache_dir)
  key = listing_key(root, files, class_names, side)
  name = _cache_name(root, side, key)
  path = os.path.join(cache_dir, name)
  cached = _read(path, key, list(files))
  if cached is not None:
    images, out_labels, skipped = cached
    from_cache = True
  else:
    images, out_labels, skipped, examples = {}, {}, {}, {}
    for split in files:
      images[split], out_labels[split], bad = _decode_split(
          root, split, list(files[split]), labels[split], side, num_threads)
      skipped[split] = len(bad)
      examples[split] = [os.path.relpath(p, root) for p in bad]
    try:
      path = _write(cache_dir, name, key, root, side, images, out_labels,
                    skipped, examples)
    except OSError as e:  # read-only or full: the run goes on, uncached
      logging.warning(
          'folder:%s could not be cached in %s (%s); using the decoded '
          'images for this run only (the next start decodes them again): '
          'free space there or set --config.data.cache_dir to a writable '
          'directory.', root, cache_dir, e)
      path = ''
    from_cache = False
  for split in images:
    n, h, w, _ = images[split].shape
    total = n + skipped[split]
    log = logging.warning if skipped[split] else logging.info
    log('folder:%s split %r: %d of %d files held in memory as %dx%d uint8 '
        '(%.1f MB), %d skipped (not decodable JPEG/PNG); %s %s', root, split,
        n, total, h, w, images[split].nbytes / 2**20, skipped[split],
        'read from' if from_cache else
        'decoded and cached in' if path else 'decoded, not cached', path)
  return FolderArrays(images, out_labels, skipped, path, from_cache)
