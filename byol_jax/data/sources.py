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
source maps with `resolve_split` (splits.py). Each kind has its module:
folder.py (FolderSource), tfds_sources.py (TfdsSource), known_sizes.py (the
sizes known without opening a source, and the SizedSource stand-in); the
in-memory sources (InMemorySource: digits, synthetic) are here, and this
module names them all.

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
import dataclasses
from typing import Mapping

import numpy as np

from byol_jax.data import folder
from byol_jax.data import known_sizes
from byol_jax.data import splits
from byol_jax.data import tfds_sources

# The public names of the source kinds, each defined in its own module.
LOGICAL_SPLITS = splits.LOGICAL_SPLITS
IMAGENET_SPLITS = splits.IMAGENET_SPLITS
HELD_OUT = splits.HELD_OUT
Source = splits.Source
tfds_split = splits.tfds_split
FolderSource = folder.FolderSource
folder_source = folder.folder_source
IMAGE_EXTENSIONS = folder.IMAGE_EXTENSIONS
TfdsSource = tfds_sources.TfdsSource
tfds_source = tfds_sources.tfds_source
SizedSource = known_sizes.SizedSource
known_source = known_sizes.known_source
KNOWN_SIZES = known_sizes.KNOWN_SIZES
KNOWN_IMAGE_SHAPES = known_sizes.KNOWN_IMAGE_SHAPES
SYNTHETIC_SIZES = known_sizes.SYNTHETIC_SIZES
DIGITS_NUM_TRAIN = known_sizes.DIGITS_NUM_TRAIN

_HOLD_OUT_SEED = 0  # fixed: the same held-out examples for every run and seed


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
    """The split names: the keys of `images`.

    Returns:
      A tuple of raw split names, e.g. ('train', 'test'), with 'held_out' after
      `hold_out`.
    """
    return tuple(self.images)

  def num_examples(self, split):
    """Number of examples in a split.

    Args:
      split: a logical or raw split name (see `resolve_split`).

    Returns:
      The number of examples (images) in the resolved split.

    Raises:
      ValueError: the split does not resolve.
    """
    return len(self.labels[self.resolve_split(split)])



def get_source(spec: str, *, data_dir: str | None = None,
               validate_files: bool = True) -> Source:
  """Builds the source named by `spec`.

  Args:
    spec: 'tfds:<name>', 'folder:<path>', 'digits' or 'synthetic[:<side>]'.
    data_dir: TFDS data directory (default: TFDS's, ~/tensorflow_datasets).
    validate_files: for folders, check every file's header/trailer once and
      leave out the undecodable ones (see `folder_source`).

  Returns:
    A `Source`: a TfdsSource (TFDS's metadata only; nothing is read yet), a
    FolderSource (file lists; images are decoded later) or an
    InMemorySource (digits, synthetic: the images themselves).

  Raises:
    ValueError: `spec` is not one of those forms, the synthetic side is not a
      positive integer, or the dataset behind it is missing or unusable (see
      `tfds_source`, `folder_source`).
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

  Returns:
    An InMemorySource 'digits' of 10 classes: float32 [1500, 8, 8, 3] and
    [297, 8, 8, 3] images in [0, 1] (grey, repeated over RGB), int32 labels.

  Raises:
    ValueError: scikit-learn is not importable (a machine set up with only
      the GPU suite's wheels, say); the message says how to install it.
  """
  try:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f'the digits come from scikit-learn, which is not '
                     f'importable ({e}); pip install scikit-learn, or use '
                     'another dataset (synthetic, folder:PATH).') from None
  digits = datasets.load_digits()
  images = np.repeat(digits.images[..., None] / 16., 3, -1).astype(np.float32)
  labels = digits.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(labels))
  train, test = perm[:DIGITS_NUM_TRAIN], perm[DIGITS_NUM_TRAIN:]
  return InMemorySource('digits', known_sizes.DIGITS_NUM_CLASSES,
                        {'train': images[train], 'test': images[test]},
                        {'train': labels[train], 'test': labels[test]})


def synthetic_source(side: int = 32,
                     num_train: int = SYNTHETIC_SIZES['train'],
                     num_test: int = SYNTHETIC_SIZES['test'],
                     num_classes: int = known_sizes.SYNTHETIC_NUM_CLASSES):
  """Uniform random uint8 images (seed 0) with random labels, for benchmarks.

  Args:
    side: image height and width, in pixels.
    num_train: images in 'train'.
    num_test: images in 'test'.
    num_classes: labels are drawn uniformly from [0, num_classes).

  Returns:
    An InMemorySource named 'synthetic:<side>' holding uint8
    [num_train | num_test, side, side, 3] images and int32 labels; the same
    for every call with the same arguments.
  """
  rng = np.random.default_rng(0)
  def make(n):
    return (rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8),
            rng.integers(0, num_classes, n).astype(np.int32))
  (xtr, ytr), (xte, yte) = make(num_train), make(num_test)
  return InMemorySource(f'synthetic:{side}', num_classes,
                        {'train': xtr, 'test': xte},
                        {'train': ytr, 'test': yte})
