"""Split names: the paper's logical splits, and the base class of sources.

Split names are either a source's own split names ('train', 'test',
'train[10000:]', ...) or the logical names of the paper's protocol
(`LOGICAL_SPLITS`), which each source maps with `resolve_split`
(`generic_split` for datasets with a train split and maybe val/test,
`tfds_split` for TFDS names, ImageNet's protocol included).
"""
from typing import Mapping

# 'pretrain': BYOL pre-training; 'linear_train' / 'linear_valid': the linear
# probe's training and hyper-parameter selection sets; 'test': reported numbers.
LOGICAL_SPLITS = ('pretrain', 'linear_train', 'linear_valid', 'test')

# The official ImageNet protocol (BYOL paper, Appendix C.1; official
# byol/utils/dataset.py): pre-train on all of `train`, hold out its first
# 10,000 images to select linear-probe hyper-parameters, report on `validation`.
IMAGENET_VALID_EXAMPLES = 10_000
IMAGENET_SPLITS = {
    'pretrain': 'train',
    'linear_train': f'train[{IMAGENET_VALID_EXAMPLES}:]',
    'linear_valid': f'train[:{IMAGENET_VALID_EXAMPLES}]',
    'test': 'validation'}

HELD_OUT = 'held_out'  # the raw split that `hold_out` adds
HOLD_OUT_HINT = ('hold out part of train with '
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
  return generic_split(logical, tuple(available), f'tfds:{name}')


def generic_split(logical: str, available: tuple[str, ...], what: str) -> str:
  """Logical -> raw split for datasets with a train split and maybe val/test.

  'pretrain' and 'linear_train' -> 'train' (without the held-out examples,
  when `hold_out` made some). 'test' -> 'test', else 'validation' / 'valid'
  / 'val', else 'held_out'. 'linear_valid' -> 'held_out', else the
  validation split when there is also a 'test' to report on.

  Args:
    logical: one of `LOGICAL_SPLITS`.
    available: the raw split names of the dataset.
    what: the dataset, for the error message.

  Returns:
    A name in `available`.

  Raises:
    ValueError: no split of `available` serves `logical`.
  """
  val = [s for s in ('validation', 'valid', 'val') if s in available]
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
  hint = '' if HELD_OUT in available else f', or {HOLD_OUT_HINT}'
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
    """The source's own split names.

    Returns:
      E.g. ('train', 'test'), with 'held_out' when part of train is held out.

    Raises:
      NotImplementedError: in this base class; subclasses define it.
    """
    raise NotImplementedError

  def resolve_split(self, split: str) -> str:
    """The source's own split name for a logical or raw split name.

    Args:
      split: one of LOGICAL_SPLITS (mapped by `generic_split`) or one of
        `raw_splits()` (returned as is).

    Returns:
      A name in `raw_splits()`.

    Raises:
      ValueError: `split` is neither, or no raw split serves the logical one.
    """
    if split in LOGICAL_SPLITS:
      return generic_split(split, self.raw_splits(), self.name)
    if split not in self.raw_splits():
      hint = f', or {HOLD_OUT_HINT}' if split == HELD_OUT else ''
      raise ValueError(f'split {split!r} of {self.name} is unknown; use one of '
                       f'{sorted(self.raw_splits())} or {LOGICAL_SPLITS}'
                       f'{hint}')
    return split

  def has_split(self, split: str) -> bool:
    """Whether `resolve_split(split)` succeeds.

    Args:
      split: a logical or raw split name.

    Returns:
      True when the source has a split for it.
    """
    try:
      self.resolve_split(split)
      return True
    except ValueError:
      return False

  def num_examples(self, split: str) -> int:
    """Number of examples in a split.

    Args:
      split: a logical or raw split name.

    Returns:
      The example count (images) of the resolved split.

    Raises:
      NotImplementedError: in this base class; subclasses define it.
    """
    raise NotImplementedError


def slice_size(split: str, sizes: Mapping[str, int]) -> int:
  """Number of examples in a split or a slice of one.

  Args:
    split: 'name' or 'name[a:b]' with integer (possibly negative or empty)
      bounds, as TFDS spells slices.
    sizes: {raw split name: number of examples}.

  Returns:
    sizes[name], or the length of range(sizes[name])[a:b].

  Raises:
    ValueError: `name` is not in `sizes`, or a bound is not an integer.
  """
  name, bracket, rest = split.partition('[')
  if name not in sizes:
    raise ValueError(f'split {split!r} is unknown; the splits are '
                     f'{sorted(sizes)}')
  if not bracket:
    return sizes[name]
  start, _, stop = rest.rstrip(']').partition(':')
  bounds = slice(int(start) if start else None, int(stop) if stop else None)
  return len(range(sizes[name])[bounds])
