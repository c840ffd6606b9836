"""Dataset sources named by one config string.

    get_source('tfds:imagenet2012')   any TFDS dataset (prepared in `data_dir`)
    get_source('folder:/data/pets')   class sub-folders of JPEG/PNG images
    get_source('digits')              scikit-learn's 8x8 digits (offline)
    get_source('synthetic:64')        random images for benchmarks (side 64)
    hold_out(source, 500)             the same, with 500 training examples
                                      moved to a new 'held_out' split

A `Source` only describes the data (classes, splits, where the bytes are); the
iterators that decode, crop and batch it live in `pipeline.py`. Split names are
either a source's own split names ('train', 'test', 'train[10000:]', ...) or
the logical names of the paper's protocol (`LOGICAL_SPLITS`), which each
source maps with `resolve_split`.

Datasets with only a train split (an image folder without a test/ folder, a
TFDS dataset with only 'train') have nothing for the linear probe or the kNN
monitor to report on. `hold_out` carves a fixed slice out of 'train' into a
raw split 'held_out' (the config's `data.held_out_examples`); the logical
'test' and 'linear_valid' then fall back on it, and 'pretrain' /
'linear_train' ('train') no longer contain it. ImageNet needs none of this:
its protocol already holds out train[:10000] (`IMAGENET_SPLITS`).

Datasets that fit in memory are held as uint8 (or float) arrays in an
`InMemorySource`: the bundled `digits`, `synthetic`, and image folders and
TFDS datasets whose decoded size is within the config's
`data.max_in_memory_mb` (`memory_sources.py`: folders decoded once with
Pillow and cached on disk, small TFDS datasets through tfds.as_numpy).
They are cropped on the devices (`in_memory.py`). Larger folders and TFDS
datasets stream through tf.data (`tf_stream.py`).

TensorFlow and TFDS are imported lazily, by TFDS sources only: `digits`,
`synthetic` and image folders work on machines without TensorFlow (GPU hosts).
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

HELD_OUT = 'held_out'  # the raw split that `hold_out` adds
_HOLD_OUT_SEED = 0  # fixed: the same held-out examples for every run and seed
_HOLD_OUT_HINT = ('hold out part of train with '
                  '--config.data.held_out_examples=N')


def tfds_split(name: str, logical: str, available=()) -> str:
  """Maps a logical split name to a TFDS split string for dataset `name`.

  Args:
    name: TFDS dataset name, e.g. 'imagenet2012' or 'cifar10'.
    logical: one of `LOGICAL_SPLITS`.
    available: the dataset's split names (used for non-ImageNet datasets),
      with 'held_out' among them when part of train is held out.

  Returns:
    The TFDS split string, e.g. 'train[10000:]', or 'held_out' (which
    `TfdsSource.resolve_split` turns into 'train[:N]').

  Raises:
    ValueError: `logical` is not a logical split, or the dataset has no split
      for it (see `_generic_split`).
  """
  if logical not in LOGICAL_SPLITS:
    raise ValueError(f'logical split {logical!r} is not one of '
                     f'{LOGICAL_SPLITS}')
  if name.split('/')[0] == 'imagenet2012':
    return IMAGENET_SPLITS[logical]
  return _generic_split(logical, tuple(available), f'tfds:{name}')


def _generic_split(logical: str, available: tuple[str, ...], what: str) -> str:
  """Logical -> raw split for datasets with a train split and maybe val/test.

  'pretrain' and 'linear_train' -> 'train' (without the held-out examples,
  when `hold_out` made some). 'test' -> 'test', else 'validation' / 'val',
  else 'held_out'. 'linear_valid' -> 'held_out', else 'validation' / 'val'
  when there is also a 'test' to report on.

  Args:
    logical: one of `LOGICAL_SPLITS`.
    available: the raw split names of the dataset.
    what: the dataset, for the error message.

  Returns:
    A name in `available`.

  Raises:
    ValueError: no split of `available` serves `logical`.
  """
  val = [s for s in ('validation', 'val') if s in available]
  if logical in ('pretrain', 'linear_train'):
    return 'train'
  if logical == 'test':
    for s in ('test', *val, HELD_OUT):
      if s in available:
        return s
  if logical == 'linear_valid':
    if HELD_OUT in available:
      return HELD_OUT
    if 'test' in available and val:
      return val[0]
  hint = '' if HELD_OUT in available else f', or {_HOLD_OUT_HINT}'
  raise ValueError(f'{what} has no split for {logical!r} (its splits: '
                   f'{sorted(available)}); pass a split name it has '
                   f'instead{hint}.')


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
      hint = f', or {_HOLD_OUT_HINT}' if split == HELD_OUT else ''
      raise ValueError(f'split {split!r} of {self.name} is unknown; use one of '
                       f'{sorted(self.raw_splits())} or {LOGICAL_SPLITS}'
                       f'{hint}')
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
  """Images held in numpy: float32 in [0, 1] or uint8 [N, H, W, 3] per split.

  Attributes:
    images: split -> [N, H, W, 3] (one H, W per split).
    labels: split -> int32 [N].
    num_skipped: split -> files left out when it was decoded from a folder.
    cache_path: the on-disk cache it was read from ('' if none).
  """
  name: str
  num_classes: int
  images: Mapping[str, np.ndarray]
  labels: Mapping[str, np.ndarray]
  num_skipped: Mapping[str, int] = dataclasses.field(default_factory=dict)
  cache_path: str = ''

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
  """A prepared TFDS dataset; `builder` is a `tfds.core.DatasetBuilder`.

  Attributes:
    held_out_examples: N > 0 (set by `hold_out`): TFDS's train[:N] is the raw
      split 'held_out' and 'train' means train[N:]. Other split strings,
      slices of 'train' included, go to TFDS as they are (so an explicit
      'train[:100]' does overlap 'held_out'). 0: nothing held out.
  """
  name: str
  num_classes: int
  builder: object
  image_key: str
  label_key: str
  mocked: bool = False  # under tfds.testing.mock_data: no split sizes/files
  held_out_examples: int = 0

  def raw_splits(self):
    splits = (tuple(self.builder.info.splits) or
              ('train', 'validation', 'test'))
    return splits + (HELD_OUT,) if self.held_out_examples else splits

  def resolve_split(self, split):
    """The TFDS split string for `split` (logical, 'held_out' or TFDS's)."""
    if split in LOGICAL_SPLITS:
      split = tfds_split(self.builder.name, split, self.raw_splits())
    n = self.held_out_examples
    if split == HELD_OUT:
      if not n:
        raise ValueError(f'split {split!r} of {self.name} is unknown; use one '
                         f'of {sorted(self.raw_splits())} or {LOGICAL_SPLITS}'
                         f', or {_HOLD_OUT_HINT}')
      return f'train[:{n}]'
    if split == 'train' and n:
      return f'train[{n}:]'
    return split  # TFDS validates (and slices) it when reading.

  def num_examples(self, split):
    split = self.resolve_split(split)
    if self.mocked:  # mock_data yields `num_examples` for any split.
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      ds = self.builder.as_dataset(
          split=split, decoders={self.image_key: tfds.decode.SkipDecoding()})
      return int(ds.cardinality())
    return self.builder.info.splits[split].num_examples


# Split sizes and class counts of the sources whose size is known without
# opening them (TFDS's catalogue; the bundled sets): used when no image may
# be read (`--dry_run`, benchmarks). A run that reads its data counts it.
SYNTHETIC_SIZES = {'train': 1024, 'test': 256}
KNOWN_SIZES = {
    'tfds:imagenet2012': ({'train': 1_281_167, 'validation': 50_000}, 1000),
    'tfds:cifar10': ({'train': 50_000, 'test': 10_000}, 10),
    'tfds:cifar100': ({'train': 50_000, 'test': 10_000}, 100),
    'tfds:stl10': ({'train': 5_000, 'test': 8_000, 'unlabelled': 100_000},
                   10),
    'tfds:imagenette': ({'train': 9_469, 'validation': 3_925}, 10),
    'digits': ({'train': DIGITS_NUM_TRAIN, 'test': 1797 - DIGITS_NUM_TRAIN},
               10),
}


def _slice_size(split: str, sizes: Mapping[str, int]) -> int:
  """Examples of 'name' or a 'name[a:b]' slice (integer bounds) of sizes."""
  name, bracket, rest = split.partition('[')
  if name not in sizes:
    raise ValueError(f'split {split!r} is unknown; the splits are '
                     f'{sorted(sizes)}')
  if not bracket:
    return sizes[name]
  start, _, stop = rest.rstrip(']').partition(':')
  bounds = slice(int(start) if start else None, int(stop) if stop else None)
  return len(range(sizes[name])[bounds])


@dataclasses.dataclass
class SizedSource(Source):
  """A stand-in for a source of known size: split sizes, no images.

  What `build` uses when no image may be read (`--dry_run`, benchmarks):
  split names resolve as the real source's do (TFDS's logical mapping for
  tfds: names, held-out examples as TFDS slices), and num_examples gives
  their sizes. It has no iterator.

  Attributes:
    split_sizes: raw split -> number of examples.
    held_out_examples: as TfdsSource's (set by `hold_out`).
    stand_in: always True: nothing was read.
  """
  name: str
  num_classes: int
  split_sizes: Mapping[str, int]
  held_out_examples: int = 0
  stand_in: bool = True

  def raw_splits(self):
    splits = tuple(self.split_sizes)
    return splits + (HELD_OUT,) if self.held_out_examples else splits

  def resolve_split(self, split):
    if split in LOGICAL_SPLITS:
      if self.name.startswith('tfds:'):
        split = tfds_split(self.name[5:], split, self.raw_splits())
      else:
        split = _generic_split(split, self.raw_splits(), self.name)
    n = self.held_out_examples
    if split == HELD_OUT and n:
      return f'train[:{n}]'
    if split == 'train' and n:
      return f'train[{n}:]'
    if split.partition('[')[0] not in self.split_sizes:
      raise ValueError(f'split {split!r} of {self.name} is unknown; use one '
                       f'of {sorted(self.raw_splits())} or {LOGICAL_SPLITS}')
    return split

  def num_examples(self, split):
    return _slice_size(self.resolve_split(split), self.split_sizes)


# Image (height, width) of the known sources whose images share one size,
# for choosing the in-memory path without opening them (`--dry_run`).
KNOWN_IMAGE_SHAPES = {'tfds:cifar10': (32, 32), 'tfds:cifar100': (32, 32),
                      'tfds:stl10': (96, 96), 'digits': (8, 8)}


def known_source(spec: str):
  """A SizedSource for a spec in KNOWN_SIZES (or synthetic), else None."""
  kind, _, arg = spec.partition(':')
  if kind == 'synthetic':
    if arg and not (arg.isdigit() and int(arg) > 0):
      return None  # get_source explains what is wrong.
    return SizedSource(spec, 10, dict(SYNTHETIC_SIZES))
  if spec in KNOWN_SIZES:
    sizes, classes = KNOWN_SIZES[spec]
    return SizedSource(spec, classes, dict(sizes))
  del arg
  return None


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
    side = int(arg) if arg.isdigit() else -1 if arg else 32
    if side <= 0:
      raise ValueError(f'dataset spec {spec!r}: the synthetic image side must '
                       'be a positive integer, e.g. synthetic:32')
    return synthetic_source(side)
  raise ValueError(f'dataset spec {spec!r} is not one of tfds:<name>, '
                   "folder:<path>, 'digits', 'synthetic[:<side>]'")


def hold_out(source: Source, num_examples: int) -> Source:
  """A copy of `source` whose 'train' split lends `num_examples` to 'held_out'.

  For datasets with only a train split: the logical 'test' and 'linear_valid'
  then resolve to 'held_out' (see `_generic_split`), while 'pretrain' and
  'linear_train' read the rest of 'train'. The held-out examples are the same
  for every run, seed and method: for in-memory and folder sources they are a
  fixed (seed 0) random subset of train, and both parts keep train's order
  (folders: sorted by class); for TFDS (files shuffled when prepared) they
  are train[:num_examples] and 'train' becomes train[num_examples:]. `name`
  is unchanged; `source` is not modified.

  Args:
    source: an `InMemorySource`, `FolderSource` or `TfdsSource` with a
      'train' split and no 'held_out' one.
    num_examples: how many training examples to hold out, in
      [1, train size - 1].

  Returns:
    A new source of the same class with the split 'held_out'.

  Raises:
    ValueError: `num_examples` is not in that range, `source` already has a
      'held_out' split or has no 'train' one, or it is tfds:imagenet2012
      (whose protocol already holds out train[:10000]).
    TypeError: `source` is of another class.
  """
  if not isinstance(source, (InMemorySource, FolderSource, TfdsSource,
                             SizedSource)):
    raise TypeError(f'hold_out: {type(source).__name__} ({source.name}) is '
                    'not an in-memory, folder or TFDS source')
  if source.name.split('/')[0] == 'tfds:imagenet2012':
    raise ValueError(
        f'cannot hold out num_examples={num_examples!r} of {source.name}: its '
        'paper protocol already holds out train[:10000] as linear_valid '
        '(IMAGENET_SPLITS); set held_out_examples to 0 for it.')
  splits = source.raw_splits()
  if HELD_OUT in splits:
    raise ValueError(f'cannot hold out num_examples={num_examples!r} of '
                     f'{source.name}: it already has a {HELD_OUT!r} split '
                     f'(its splits: {sorted(splits)}); hold out once, from '
                     'the source get_source returns.')
  if 'train' not in splits:
    raise ValueError(f'{source.name} has no train split to hold out from '
                     f'(its splits: {sorted(splits)}); set '
                     'held_out_examples to 0.')
  total = source.num_examples('train')
  if (isinstance(num_examples, bool) or
      not isinstance(num_examples, (int, np.integer)) or
      not 0 < num_examples < total):
    raise ValueError(f'cannot hold out num_examples={num_examples!r} of the '
                     f'{total} training examples of {source.name}; use an int '
                     f'from 1 to {total - 1}.')
  num_examples = int(num_examples)
  if isinstance(source, (TfdsSource, SizedSource)):
    # SizedSource: the sizes of either kind of hold-out (a stand-in).
    return dataclasses.replace(source, held_out_examples=num_examples)
  perm = np.random.default_rng(_HOLD_OUT_SEED).permutation(total)
  held, rest = np.sort(perm[:num_examples]), np.sort(perm[num_examples:])
  field = 'images' if isinstance(source, InMemorySource) else 'files'
  data = getattr(source, field)
  changes = {
      field: {**data, 'train': data['train'][rest],
              HELD_OUT: data['train'][held]},
      'labels': {**source.labels, 'train': source.labels['train'][rest],
                 HELD_OUT: source.labels['train'][held]}}
  if source.num_skipped:  # skipped files stay counted in train
    changes['num_skipped'] = {**source.num_skipped, HELD_OUT: 0}
  return dataclasses.replace(source, **changes)


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


def synthetic_source(side: int = 32,
                     num_train: int = SYNTHETIC_SIZES['train'],
                     num_test: int = SYNTHETIC_SIZES['test'],
                     num_classes: int = 10):
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
      that are not JPEG/PNG, or whose end marker is missing and that Pillow
      then fails to decode (truncated), are left out and counted in a warning.
      The streaming pipeline's `ignore_errors` also drops anything that still
      fails. False: the listing only (the in-memory path decodes every file
      anyway, memory_sources.in_memory_folder).

  Returns:
    A `FolderSource`.

  Raises:
    ValueError: the folder is missing, a split holds no (decodable) image, or
      the splits' class folders differ.
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
    import PIL.Image  # pylint: disable=g-import-not-at-top
    for i in suspects:  # rare: truncated files or trailing junk
      try:
        with PIL.Image.open(paths[i]) as im:
          im.convert('RGB')
        ok[i] = True
      except (OSError, ValueError, SyntaxError):
        pass
  return ok


def tfds_source(name: str, *, data_dir: str | None = None) -> TfdsSource:
  """A TFDS image-classification dataset; it must already be prepared."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f'tfds:{name} is not a TFDS dataset name; '
                     'tfds.list_builders() lists them (e.g. tfds:cifar10, '
                     'tfds:imagenet2012).') from None
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
