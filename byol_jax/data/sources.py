"""Data sources (tfds:<name>, folder:<path>, digits, synthetic[:<side>]), their
splits (a source's own, or LOGICAL_SPLITS) and how a run opens one."""

import dataclasses
import importlib.util
import os
from typing import Any, Mapping

from absl import logging
import numpy as np

from byol_jax.data import folder

# 'pretrain': BYOL pre-training; 'linear_train' / 'linear_valid': the linear
# probe's training and hyper-parameter selection sets; 'test': reported numbers.
LOGICAL_SPLITS = ('pretrain', 'linear_train', 'linear_valid', 'test')
# ImageNet: the paper's protocol (Appendix C.1; official byol/utils/dataset.py).
IMAGENET_VALID_EXAMPLES = 10_000
IMAGENET_SPLITS = {
    'pretrain': 'train',
    'linear_train': f'train[{IMAGENET_VALID_EXAMPLES}:]',
    'linear_valid': f'train[:{IMAGENET_VALID_EXAMPLES}]',
    'test': 'validation',
}
HELD_OUT = 'held_out'  # the raw split that `hold_out` adds
_HOLD_OUT_HINT = 'hold out part of train with --config.data.held_out_examples=N'
IN_MEMORY, STREAMING = 'in_memory', 'streaming'  # derived.data_path

# Known without opening a source (--dry_run, benchmarks): classes, the image
# (height, width) where a source's images share one, and split sizes.
SYNTHETIC_SIZES = {'train': 1024, 'test': 256}
KNOWN_SIZES = {
    'tfds:imagenet2012': (1000, None, dict(train=1_281_167, validation=50_000)),
    'tfds:cifar10': (10, (32, 32), dict(train=50_000, test=10_000)),
    'tfds:cifar100': (100, (32, 32), dict(train=50_000, test=10_000)),
    'tfds:stl10': (10, (96, 96), dict(train=5000, test=8000, unlabelled=10**5)),
    'tfds:imagenette': (10, None, dict(train=9_469, validation=3_925)),
    'digits': (10, (8, 8), dict(train=1500, test=297)),  # get_source's
}


def _is_imagenet(name: str) -> bool:  # 'tfds:' optional, any version
  name = name.removeprefix('tfds:')
  return name.split('/')[0].split(':')[0] == 'imagenet2012'


def generic_split(logical: str, available: tuple[str, ...], what: str) -> str:
  """Logical -> raw split of dataset `what` (ImageNet: its paper protocol)."""
  if _is_imagenet(what):
    return IMAGENET_SPLITS[logical]
  if logical in ('pretrain', 'linear_train'):
    return 'train'
  val = [s for s in ('validation', 'valid', 'val') if s in available]
  order = {  # linear_valid: a validation split only beside a test split
      'test': ('test', *val, HELD_OUT),
      'linear_valid': (HELD_OUT, *(val if 'test' in available else ())),
  }.get(logical, ())
  if found := next((s for s in order if s in available), None):
    return found
  hint = '' if HELD_OUT in available else f', or {_HOLD_OUT_HINT}'
  raise ValueError(
      f'{what} has no split for {logical!r} (its splits: '
      f'{sorted(available)}); pass a split name it has instead{hint}.'
  )


@dataclasses.dataclass
class Source:
  """A named dataset: classes (labels 0..num_classes-1) and raw splits."""

  name: str
  num_classes: int
  slices = False  # whether a split name may carry a TFDS slice, 'train[5:]'

  def split_sizes(self) -> dict[str, int]:
    return {s: len(y) for s, y in self.labels.items()}

  def raw_splits(self) -> tuple[str, ...]:
    return tuple(self.split_sizes())

  def resolve_split(self, split: str) -> str:
    """The raw split (or TFDS slice) that a logical or raw split name reads."""
    if split in LOGICAL_SPLITS:
      split = generic_split(split, self.raw_splits(), self.name)
    raw = split.partition('[')[0] if self.slices else split
    if split in self.raw_splits() or raw in self.split_sizes():
      return split
    hint = f', or {_HOLD_OUT_HINT}' if split == HELD_OUT else ''
    raise ValueError(
        f'split {split!r} of {self.name} is unknown; use one of '
        f'{sorted(self.raw_splits())} or {LOGICAL_SPLITS}{hint}'
    )

  def num_examples(self, split: str) -> int:
    return self.split_sizes()[self.resolve_split(split)]


@dataclasses.dataclass
class InMemorySource(Source):
  """Images in numpy: split -> uint8 (or float32 in [0, 1]) [N, H, W, 3]."""

  images: Mapping[str, np.ndarray]
  labels: Mapping[str, np.ndarray]  # split -> int32 [N]
  num_skipped: Mapping[str, int] = dataclasses.field(default_factory=dict)
  cache_path: str = ''  # folder.py's cache file it came from


@dataclasses.dataclass
class FolderSource(Source):
  """Image files in class sub-folders, as folder.list_folder lists them."""

  root: str
  class_names: tuple[str, ...]  # label i's folder name
  files: Mapping[str, np.ndarray]  # split -> paths, by class then path
  labels: Mapping[str, np.ndarray]
  num_skipped: Mapping[str, int]  # split -> undecodable files left out


@dataclasses.dataclass
class TfdsSource(Source):
  """A prepared TFDS set (held out N: train[:N], train[N:]), or a stand-in."""

  builder: Any = None
  image_key: str = 'image'
  label_key: str = 'label'
  held_out_examples: int = 0
  sizes: Mapping[str, int] | None = None
  stand_in = property(lambda self: self.builder is None)  # known sizes only
  slices = True

  def split_sizes(self):
    if self.stand_in:
      return dict(self.sizes)
    return {s: v.num_examples for s, v in self.builder.info.splits.items()}

  def raw_splits(self):
    names = tuple(self.split_sizes())
    return names + (HELD_OUT,) if self.held_out_examples else names

  def resolve_split(self, split):
    split, n = super().resolve_split(split), self.held_out_examples
    if split in (HELD_OUT, 'train') and n:
      return f'train[:{n}]' if split == HELD_OUT else f'train[{n}:]'
    return split

  def num_examples(self, split):
    split = self.resolve_split(split)
    if not self.stand_in:
      return self.builder.info.splits[split].num_examples
    name, _, bounds = split.partition('[')
    start, _, stop = bounds.rstrip(']').partition(':')
    part = slice(int(start or 0), int(stop) if stop else None)
    return len(range(self.sizes[name])[part])


def get_source(
    spec: str, *, data_dir: str | None = None, validate_files: bool = True
) -> Source:
  """The source of a spec; ValueError saying how to fix a bad or missing one."""
  kind, _, arg = spec.partition(':')
  if kind == 'tfds' and arg:
    return tfds_source(arg, data_dir=data_dir)
  if kind == 'folder' and arg:
    root, *listing = folder.list_folder(arg, validate_files=validate_files)
    return FolderSource(f'folder:{root}', len(listing[0]), root, *listing)
  if spec == 'digits':  # scikit-learn's 8x8 as RGB float32, seed-0 split
    try:
      from sklearn import datasets  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ValueError(
          f'the digits need scikit-learn, which is not importable ({e}); pip '
          'install scikit-learn, or use synthetic or folder:PATH.'
      ) from None
    digits = datasets.load_digits()
    x = np.repeat(digits.images[..., None] / 16.0, 3, -1).astype(np.float32)
    y = digits.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(y))
    split = {'train': perm[:1500], 'test': perm[1500:]}
    arrays = ({s: a[i] for s, i in split.items()} for a in (x, y))
    return InMemorySource('digits', 10, *arrays)
  if kind == 'synthetic':
    side = int(arg) if arg.isdigit() else -1 if arg else 32
    if side <= 0:
      raise ValueError(
          f'dataset spec {spec!r}: the synthetic image side must be a '
          'positive integer, e.g. synthetic:32'
      )
    rng = np.random.default_rng(0)  # uniform uint8 images, random labels
    images, labels = {}, {}
    for split, n in SYNTHETIC_SIZES.items():
      images[split] = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
      labels[split] = rng.integers(0, 10, n).astype(np.int32)
    return InMemorySource(f'synthetic:{side}', 10, images, labels)
  raise ValueError(
      f'dataset spec {spec!r} is not one of tfds:<name>, folder:<path>, '
      "'digits', 'synthetic[:<side>]'"
  )


def hold_out(source: Source, num_examples: int) -> Source:
  """A copy whose 'train' lends num_examples to 'held_out': a seed-0 random
  subset (orders kept), or TFDS's (shuffled when prepared) train[:N]."""
  what = f'cannot hold out num_examples={num_examples!r} of'
  splits, why = source.raw_splits(), ''
  if _is_imagenet(source.name):
    why = 'its paper protocol holds out train[:10000] as linear_valid already'
  elif HELD_OUT in splits:  # hold out once, from get_source's source
    why = f'it already has a {HELD_OUT!r} split (its splits: {sorted(splits)})'
  elif 'train' not in splits:
    why = f'it has no train split to hold out from: {sorted(splits)}'
  if why:
    raise ValueError(f'{what} {source.name}: {why}; set held_out_examples=0.')
  total = source.num_examples('train')
  if isinstance(num_examples, bool) or num_examples not in range(1, total):
    raise ValueError(
        f'{what} the {total} training examples of {source.name}; use an int '
        f'from 1 to {total - 1}.'
    )
  if isinstance(source, TfdsSource):  # the stand-in too: the same sizes
    return dataclasses.replace(source, held_out_examples=int(num_examples))
  perm = np.random.default_rng(0).permutation(total)
  held, rest = np.sort(perm[:num_examples]), np.sort(perm[num_examples:])
  split = lambda d: {**d, 'train': d['train'][rest], HELD_OUT: d['train'][held]}
  fields = ('images' if hasattr(source, 'images') else 'files', 'labels')
  changes = {f: split(getattr(source, f)) for f in fields}
  if source.num_skipped:  # skipped files stay counted in train
    changes['num_skipped'] = {**source.num_skipped, HELD_OUT: 0}
  return dataclasses.replace(source, **changes)


def tfds_source(name: str, *, data_dir: str | None = None) -> TfdsSource:
  """A prepared TFDS dataset (or tfds.testing.mock_data's); no download."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(
        f'tfds:{name} is not a TFDS dataset name; tfds.list_builders() lists '
        'them (e.g. tfds:cifar10, tfds:imagenet2012).'
    ) from None
  if not builder.is_prepared():
    try:  # readable all the same? (tfds.testing.mock_data makes data up)
      builder.as_dataset(split='train')
    except AssertionError:  # TFDS's "could not find data in <data_dir>"
      dd = data_dir or str(builder.data_dir_root)
      manual = os.path.join(dd, 'downloads', 'manual')
      fix = f'run `tfds build {name} --data_dir={dd}` online first.'
      if _is_imagenet(name):  # about 150 GB, hours
        fix = (
            'ImageNet needs a manual download: put ILSVRC2012_img_train.tar '
            f'and ILSVRC2012_img_val.tar (image-net.org) in {manual}, then '
            f'`tfds build imagenet2012 --data_dir={dd} --manual_dir={manual}`.'
        )
      raise ValueError(
          f'tfds:{name} is not prepared in {builder.data_dir}; {fix}'
      ) from None
  info = builder.info
  known = KNOWN_SIZES.get(f'tfds:{builder.name}')
  if not info.splits and known:  # no split metadata (mock_data)
    infos = [
        tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0)
        for s, n in known[2].items()
    ]
    info.set_splits(tfds.core.SplitDict(infos))
  image_key, label_key = info.supervised_keys or ('image', 'label')
  classes = info.features[label_key].num_classes
  return TfdsSource(f'tfds:{name}', classes, builder, image_key, label_key)


def decoded_bytes(source: Source, side: int = 0) -> int | None:
  """Bytes of a folder's or TFDS source's uint8 arrays; None: no one size."""
  shape = (side, side)
  if not side and isinstance(source, FolderSource):  # the first decodable
    decoded = (folder.decode(p, 0) for p in source.files['train'])
    shape = next((x.shape[:2] for x in decoded if x is not None), None)
  elif not side and source.stand_in:
    shape = KNOWN_SIZES.get(source.name, (0, None))[1]
  elif not side:
    shape = source.builder.info.features[source.image_key].shape[:2]
  if shape is None or None in shape:
    return None
  return 3 * shape[0] * shape[1] * sum(source.split_sizes().values())


def in_memory_folder(
    source: FolderSource, *, side: int = 0, cache_dir: str = ''
) -> InMemorySource:
  """The folder decoded once (Pillow) through the disk cache (folder.py)."""
  arrays = folder.arrays(source, side=side, cache_dir=cache_dir)
  return InMemorySource(source.name, source.num_classes, *arrays)


def in_memory_tfds(source: TfdsSource, *, side: int = 0) -> InMemorySource:
  """Every raw split decoded by tfds.as_numpy at each start, as uint8 RGB."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  images, labels = {}, {}
  for raw in source.raw_splits():
    ds = source.builder.as_dataset(
        source.resolve_split(raw), shuffle_files=False
    )
    ys = labels[raw] = []

    def image(ex, ys=ys):
      ys.append(ex[source.label_key])
      x = ex[source.image_key]
      x = np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
      return folder.square(x, side) if side else x

    what = f'{source.name} split {raw!r}'
    images[raw], _ = folder.stack(what, map(image, tfds.as_numpy(ds)))
    labels[raw] = np.asarray(ys, np.int32)
    logging.info(
        f'{what}: {images[raw].shape} uint8 in memory '
        f'({images[raw].nbytes / 2**20:.1f} MB), through tfds.as_numpy'
    )
  return InMemorySource(source.name, source.num_classes, images, labels)


def tensorflow_importable() -> bool:
  """Whether TensorFlow is importable, found without importing it (seconds)."""
  try:
    return importlib.util.find_spec('tensorflow') is not None
  except (ImportError, ValueError):  # sys.modules['tensorflow'] = None
    return False


def open_source(data, read_data: bool):
  """(source, IN_MEMORY or STREAMING, decoded MiB or None) of config.data;
  read_data=False (--dry_run): sizes from a listing or metadata, no decoding."""
  spec, (kind, _, arg) = data.source, data.source.partition(':')
  if kind == 'tfds' and not tensorflow_importable():
    raise ValueError(
        f'data.source={spec!r}: TFDS datasets need TensorFlow, which is not '
        'importable; pip install tensorflow-cpu, or use folder:<path>.'
    )

  def named(fn, *args, field='source', **kwargs):  # errors name the field
    try:
      return fn(*args, **kwargs)
    except (ValueError, OSError) as e:
      raise ValueError(f'data.{field}={getattr(data, field)!r}: {e}') from None

  n = data.held_out_examples
  hold = lambda s: named(hold_out, s, n, field='held_out_examples') if n else s

  classes, _, sizes = KNOWN_SIZES.get(spec, (0, None, None))
  if kind == 'synthetic' and (not arg or arg.isdigit() and int(arg) > 0):
    sizes, classes = SYNTHETIC_SIZES, 10
  if sizes and not read_data:  # a stand-in: nothing read
    source = TfdsSource(spec, classes, sizes=dict(sizes))
  else:
    source = named(
        get_source, spec, data_dir=data.data_dir or None, validate_files=False
    )
  if kind == 'tfds':  # TFDS's own train[:N] slices, before anything is read
    source = hold(source)
  size, fits = None, True  # digits, synthetic
  if kind in ('folder', 'tfds'):
    size = named(decoded_bytes, source, data.cache_side)
    fits = size is not None and size <= data.max_in_memory_mb * 2**20
  megabytes = None if size is None else round(size / 2**20, 1)
  if not fits and not tensorflow_importable():
    raise ValueError(
        f'data.source={spec!r}: its decoded size ({megabytes} MiB) is above '
        f'data.max_in_memory_mb={data.max_in_memory_mb}, so it streams '
        'through tf.data, and TensorFlow is not importable; install it (pip '
        'install tensorflow-cpu), or raise that or lower data.cache_side.'
    )
  if read_data and kind == 'folder' and fits:
    source = named(
        in_memory_folder, source, side=data.cache_side, cache_dir=data.cache_dir
    )
  elif read_data and kind == 'folder':  # streams: undecodable files left out
    source = named(get_source, spec)
  elif read_data and kind == 'tfds' and fits:
    source = named(in_memory_tfds, source, side=data.cache_side)
  source = source if kind == 'tfds' else hold(source)
  return source, IN_MEMORY if fits else STREAMING, megabytes
