"""Dataset sources named by one config string.

    get_source('tfds:imagenet2012')   any TFDS dataset (prepared in `data_dir`)
    get_source('folder:/data/pets')   class sub-folders of JPEG/PNG images
    get_source('digits')              scikit-learn's 8x8 digits (offline)
    get_source('synthetic:64')        random images for benchmarks (side 64)

A `Source` only describes the data (classes, splits, where the bytes are); the
iterators that decode, crop and batch it live in `pipeline.py`. Split names are
either a source's own split names ('train', 'test', 'train[10000:]', ...) or
the logical names of the paper's protocol (`LOGICAL_SPLITS`), which each
source maps with `resolve_split`.

TensorFlow and TFDS are imported lazily: `digits` and `synthetic` work on
machines without TensorFlow (GPU hosts).
"""
import concurrent.futures
import dataclasses
import os
import time
from typing import Mapping

from absl import logging
import numpy as np

# 'pretrain': BYOL pre-training; 'linear_train' / 'linear_valid': the linear
# probe's training and hyper-parameter selection sets; 'test': reported numbers.
LOGICAL_SPLITS = ('pretrain', 'linear_train', 'linear_valid', 'test')

# The official ImageNet protocol (BYOL paper, Appendix C.1; official
# byol/utils/dataset.py): pre-train on all of `train`, hold out its first
# 10,000 images to select linear-probe hyper-parameters, report on `validation`.
IMAGENET_SPLITS = {'pretrain': 'train', 'linear_train': 'train[10000:]',
                   'linear_valid': 'train[:10000]', 'test': 'validation'}

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
_JPEG_MAGIC = b'\xff\xd8\xff'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
_TAIL_BYTES = 1024  # a JPEG ends in FFD9, a PNG in an IEND chunk; trailing
                    # junk after either is tolerated up to this many bytes.

DIGITS_NUM_TRAIN = 1500  # first 1500 of a seed-0 permutation; last 297: test


def tfds_split(name: str, logical: str, available=()) -> str:
  """Maps a logical split name to a TFDS split string for dataset `name`.

  Args:
    name: TFDS dataset name, e.g. 'imagenet2012' or 'cifar10'.
    logical: one of `LOGICAL_SPLITS`.
    available: the dataset's split names (used for non-ImageNet datasets).

  Returns:
    The TFDS split string, e.g. 'train[10000:]'.
  """
  if logical not in LOGICAL_SPLITS:
    raise ValueError(f'logical split {logical!r} is not one of '
                     f'{LOGICAL_SPLITS}')
  if name.split('/')[0] == 'imagenet2012':
    return IMAGENET_SPLITS[logical]
  return _generic_split(logical, tuple(available), f'tfds:{name}')


def _generic_split(logical: str, available: tuple[str, ...], what: str) -> str:
  """Logical -> raw split for datasets with a train split and maybe val/test."""
  held_out = [s for s in ('validation', 'val') if s in available]
  if logical in ('pretrain', 'linear_train'):
    return 'train'
  if logical == 'test':
    for s in ('test', *held_out):
      if s in available:
        return s
  if logical == 'linear_valid' and 'test' in available and held_out:
    return held_out[0]
  raise ValueError(f'{what} has no split for {logical!r} (its splits: '
                   f'{sorted(available)}); pass a split name it has instead.')


class Source:
  """Base class: a named dataset with classes and splits.

  Attributes:
    name: the spec string it was built from.
    num_classes: number of labels (labels are 0..num_classes-1).
  """
  name: str
  num_classes: int

  def raw_splits(self) -> tuple[str, ...]:
    raise NotImplementedError

  def resolve_split(self, split: str) -> str:
    """Returns the source's own split name for `split` (logical or raw)."""
    if split in LOGICAL_SPLITS:
      return _generic_split(split, self.raw_splits(), self.name)
    if split not in self.raw_splits():
      raise ValueError(f'split {split!r} of {self.name} is unknown; use one of '
                       f'{sorted(self.raw_splits())} or {LOGICAL_SPLITS}')
    return split

  def has_split(self, split: str) -> bool:
    try:
      self.resolve_split(split)
      return True
    except ValueError:
      return False

  def num_examples(self, split: str) -> int:
    raise NotImplementedError


@dataclasses.dataclass
class InMemorySource(Source):
  """Images held in numpy: float32 in [0, 1] or uint8 [N, H, W, 3] per split."""
  name: str
  num_classes: int
  images: Mapping[str, np.ndarray]
  labels: Mapping[str, np.ndarray]

  def raw_splits(self):
    return tuple(self.images)

  def num_examples(self, split):
    return len(self.labels[self.resolve_split(split)])


@dataclasses.dataclass
class FolderSource(Source):
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
    return tuple(self.files)

  def num_examples(self, split):
    return len(self.files[self.resolve_split(split)])


@dataclasses.dataclass
class TfdsSource(Source):
  """A prepared TFDS dataset; `builder` is a `tfds.core.DatasetBuilder`."""
  name: str
  num_classes: int
  builder: object
  image_key: str
  label_key: str
  mocked: bool = False  # under tfds.testing.mock_data: no split sizes/files

  def raw_splits(self):
    return tuple(self.builder.info.splits) or ('train', 'validation', 'test')

  def resolve_split(self, split):
    if split in LOGICAL_SPLITS:
      return tfds_split(self.builder.name, split, self.raw_splits())
    return split  # TFDS validates (and slices) it when reading.

  def num_examples(self, split):
    split = self.resolve_split(split)
    if self.mocked:  # mock_data yields `num_examples` for any split.
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      ds = self.builder.as_dataset(
          split=split, decoders={self.image_key: tfds.decode.SkipDecoding()})
      return int(ds.cardinality())
    return self.builder.info.splits[split].num_examples


def get_source(spec: str, *, data_dir: str | None = None,
               validate_files: bool = True) -> Source:
  """Builds the source named by `spec`.

  Args:
    spec: 'tfds:<name>', 'folder:<path>', 'digits' or 'synthetic[:<side>]'.
    data_dir: TFDS data directory (default: TFDS's, ~/tensorflow_datasets).
    validate_files: for folders, check every file's header/trailer once and
      leave out the undecodable ones (see `folder_source`).

  Returns:
    A `Source`.
  """
  kind, _, arg = spec.partition(':')
  if kind == 'tfds' and arg:
    return tfds_source(arg, data_dir=data_dir)
  if kind == 'folder' and arg:
    return folder_source(arg, validate_files=validate_files)
  if spec == 'digits':
    return digits_source()
  if kind == 'synthetic':
    return synthetic_source(int(arg) if arg else 32)
  raise ValueError(f'dataset spec {spec!r} is not one of tfds:<name>, '
                   "folder:<path>, 'digits', 'synthetic[:<side>]'")


def digits_source() -> InMemorySource:
  """scikit-learn's 1,797 8x8 digits, grey 0..16 -> RGB float32 in [0, 1].

  Split: a seed-0 permutation; its first 1,500 images are 'train' and the
  last 297 'test' (fixed, so numbers are comparable across runs).
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.repeat(digits.images[..., None] / 16., 3, -1).astype(np.float32)
  labels = digits.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(labels))
  train, test = perm[:DIGITS_NUM_TRAIN], perm[DIGITS_NUM_TRAIN:]
  return InMemorySource('digits', 10, {'train': images[train],
                                       'test': images[test]},
                        {'train': labels[train], 'test': labels[test]})


def synthetic_source(side: int = 32, num_train: int = 1024,
                     num_test: int = 256, num_classes: int = 10):
  """Uniform random uint8 images (seed 0) with random labels, for benchmarks."""
  rng = np.random.default_rng(0)
  def make(n):
    return (rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8),
            rng.integers(0, num_classes, n).astype(np.int32))
  (xtr, ytr), (xte, yte) = make(num_train), make(num_test)
  return InMemorySource(f'synthetic:{side}', num_classes,
                        {'train': xtr, 'test': xte},
                        {'train': ytr, 'test': yte})


def folder_source(root: str, *, validate_files: bool = True) -> FolderSource:
  """Image files in class sub-folders.

  Layout: `root/<class>/**/*.{jpg,jpeg,png}` (one split, 'train'), or, when
  `root/train/` exists, `root/<split>/<class>/...` for each of the sub-folders
  'train', 'validation', 'val', 'test' that exist. Class -> label mapping:
  label i is the i-th class folder name of the train split in sorted
  (byte-wise, `sorted()`) order; other splits must have the same classes.

  Args:
    root: the folder.
    validate_files: read each file's first bytes and last 1 KiB once. Files
      that are not JPEG/PNG, or whose end marker is missing and that TensorFlow
      then fails to decode (truncated), are left out and counted in a warning.
      The pipeline's `ignore_errors` also drops anything that still fails.

  Returns:
    A `FolderSource`.
  """
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise ValueError(f'folder:{root} does not exist; point folder:<path> at a '
                     'directory holding one sub-folder of images per class')
  split_dirs = {s: os.path.join(root, s) for s in
                ('train', 'validation', 'val', 'test')
                if os.path.isdir(os.path.join(root, s))}
  if 'train' not in split_dirs:
    split_dirs = {'train': root}
  class_names = tuple(sorted(e.name for e in os.scandir(split_dirs['train'])
                             if e.is_dir() and not e.name.startswith('.')))
  files, labels, skipped = {}, {}, {}
  for split, path in split_dirs.items():
    names = sorted(e.name for e in os.scandir(path)
                   if e.is_dir() and not e.name.startswith('.'))
    if split != 'train' and names != list(class_names):
      raise ValueError(f'{path} has classes {names[:5]}... but train has '
                       f'{list(class_names)[:5]}...; every split needs the '
                       'same class folders')
    paths, ys = [], []
    for label, name in enumerate(class_names):
      found = sorted(_list_images(os.path.join(path, name)))
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


def _list_images(folder):
  for dirpath, _, names in os.walk(folder):
    for n in names:  # hidden files (macOS '._x.jpg') are not images
      if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith('.'):
        yield os.path.join(dirpath, n)


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
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    for i in suspects:  # rare: truncated files or trailing junk
      try:
        tf.io.decode_image(tf.io.read_file(paths[i]), channels=3,
                           expand_animations=False)
        ok[i] = True
      except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        pass
  return ok


def tfds_source(name: str, *, data_dir: str | None = None) -> TfdsSource:
  """A TFDS image-classification dataset; it must already be prepared."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir)
  mocked = _tfds_is_mocked()
  if not mocked and not builder.is_prepared():
    raise ValueError(_unprepared_message(builder, name, data_dir))
  info = builder.info
  image_key, label_key = info.supervised_keys or ('image', 'label')
  return TfdsSource(f'tfds:{name}', info.features[label_key].num_classes,
                    builder, image_key, label_key, mocked)


def _tfds_is_mocked() -> bool:
  """True inside `tfds.testing.mock_data` (fake data, no prepared files)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  fn = tfds.core.DatasetBuilder.download_and_prepare
  return getattr(fn, '__name__', '') == 'mock_download_and_prepare'


def _unprepared_message(builder, name, data_dir) -> str:
  where = builder.data_dir
  base = name.split('/')[0]
  dd = data_dir or str(builder.data_dir_root)
  if base == 'imagenet2012':
    manual = os.path.join(dd, 'downloads', 'manual')
    return (f'tfds:{name} is not prepared in {where}. ImageNet needs a manual '
            'download: register at https://image-net.org/download-images, put '
            f'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in {manual} '
            f'(the manual_dir), then run `tfds build imagenet2012 '
            f'--data_dir={dd} --manual_dir={manual}` (about 150 GB, hours).')
  return (f'tfds:{name} is not prepared in {where}; run `tfds build {name} '
          f'--data_dir={dd}` (or tfds.builder({name!r}, data_dir={dd!r})'
          '.download_and_prepare()) on a machine with internet access first.')
