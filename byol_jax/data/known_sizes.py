"""Sizes of the sources known without opening them, and their stand-in.

Split sizes and class counts of TFDS's catalogue entries we use and of the
bundled sets (`KNOWN_SIZES`), their image shapes (`KNOWN_IMAGE_SHAPES`), and
`SizedSource`, the stand-in that plan.build uses when no image may be read
(`--dry_run`, benchmarks). A run that reads its data counts it.
"""
import dataclasses
from typing import Mapping

from byol_jax.data import splits

# scikit-learn's digits: 1,797 images of 10 classes; the first 1,500 of a
# seed-0 permutation are 'train', the last 297 'test' (sources.digits_source).
DIGITS_NUM_EXAMPLES = 1797
DIGITS_NUM_TRAIN = 1500
DIGITS_NUM_CLASSES = 10
SYNTHETIC_NUM_CLASSES = 10

SYNTHETIC_SIZES = {'train': 1024, 'test': 256}
KNOWN_SIZES = {
    'tfds:imagenet2012': ({'train': 1_281_167, 'validation': 50_000}, 1000),
    'tfds:cifar10': ({'train': 50_000, 'test': 10_000}, 10),
    'tfds:cifar100': ({'train': 50_000, 'test': 10_000}, 100),
    'tfds:stl10': ({'train': 5_000, 'test': 8_000, 'unlabelled': 100_000},
                   10),
    'tfds:imagenette': ({'train': 9_469, 'validation': 3_925}, 10),
    'digits': ({'train': DIGITS_NUM_TRAIN,
                'test': DIGITS_NUM_EXAMPLES - DIGITS_NUM_TRAIN},
               DIGITS_NUM_CLASSES),
}


@dataclasses.dataclass
class SizedSource(splits.Source):
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
    """The split names: the keys of `split_sizes`.

    Returns:
      A tuple of raw split names, e.g. ('train', 'test'), with 'held_out' when
      held_out_examples > 0.
    """
    names = tuple(self.split_sizes)
    return names + (splits.HELD_OUT,) if self.held_out_examples else names

  def resolve_split(self, split):
    """The split string the real source would read for `split`.

    Args:
      split: a logical split name (TFDS's mapping for tfds: names, else
        `generic_split`), 'held_out', or a raw split name or slice.

    Returns:
      A raw split name or a TFDS slice: 'held_out' -> 'train[:N]' and
      'train' -> 'train[N:]' when N examples are held out.

    Raises:
      ValueError: `split` names no split of this source.
    """
    if split in splits.LOGICAL_SPLITS:
      if self.name.startswith('tfds:'):
        split = splits.tfds_split(self.name[5:], split, self.raw_splits())
      else:
        split = splits.generic_split(split, self.raw_splits(), self.name)
    n = self.held_out_examples
    if split == splits.HELD_OUT and n:
      return f'train[:{n}]'
    if split == 'train' and n:
      return f'train[{n}:]'
    if split.partition('[')[0] not in self.split_sizes:
      raise ValueError(f'split {split!r} of {self.name} is unknown; use one '
                       f'of {sorted(self.raw_splits())} or '
                       f'{splits.LOGICAL_SPLITS}')
    return split

  def num_examples(self, split):
    """Number of examples in a split.

    Args:
      split: a logical or raw split name (see `resolve_split`).

    Returns:
      The number of examples (images) in the resolved split.

    Raises:
      ValueError: the split does not resolve.
    """
    return splits.slice_size(self.resolve_split(split), self.split_sizes)


# Image (height, width) of the known sources whose images share one size,
# for choosing the in-memory path without opening them (`--dry_run`).
KNOWN_IMAGE_SHAPES = {'tfds:cifar10': (32, 32), 'tfds:cifar100': (32, 32),
                      'tfds:stl10': (96, 96), 'digits': (8, 8)}


def known_source(spec: str):
  """The stand-in of a source whose sizes are known without opening it.

  Args:
    spec: a dataset spec, e.g. 'tfds:cifar10' or 'synthetic:32'.

  Returns:
    A SizedSource for a spec in KNOWN_SIZES or a well-formed synthetic one,
    else None (the caller opens the real source, or get_source explains a
    malformed spec).
  """
  kind, _, arg = spec.partition(':')
  if kind == 'synthetic':
    if arg and not (arg.isdigit() and int(arg) > 0):
      return None  # get_source explains what is wrong.
    return SizedSource(spec, SYNTHETIC_NUM_CLASSES, dict(SYNTHETIC_SIZES))
  if spec in KNOWN_SIZES:
    sizes, classes = KNOWN_SIZES[spec]
    return SizedSource(spec, classes, dict(sizes))
  del arg
  return None
