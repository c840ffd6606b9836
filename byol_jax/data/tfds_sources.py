"""TFDS datasets: `tfds:<name>`, prepared in a TFDS data directory.

TensorFlow and TFDS are imported lazily, by TFDS sources only.
"""
import dataclasses
import os

from byol_jax.data import known_sizes
from byol_jax.data import splits


@dataclasses.dataclass
class TfdsSource(splits.Source):
  """A prepared TFDS dataset; `builder` is a `tfds.core.DatasetBuilder`.

  Attributes:
    builder: the tfds.core.DatasetBuilder (its `info` gives splits and sizes).
    image_key: the feature holding the uint8 [H, W, 3] image.
    label_key: the feature holding the int64 class label.
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
  held_out_examples: int = 0

  def raw_splits(self):
    """The split names, as the prepared builder lists them.

    Returns:
      A tuple of raw split names, e.g. ('train', 'test'), with 'held_out' when
      held_out_examples > 0.
    """
    names = tuple(self.builder.info.splits)
    return names + (splits.HELD_OUT,) if self.held_out_examples else names

  def resolve_split(self, split):
    """The TFDS split string for `split`.

    Args:
      split: a logical split name (mapped by `splits.tfds_split`),
        'held_out', or any TFDS split string ('train', 'train[:10%]', ...).

    Returns:
      The TFDS split string: 'held_out' -> 'train[:N]' and 'train' ->
      'train[N:]' when N examples are held out; other strings unchanged
      (TFDS validates them when reading).

    Raises:
      ValueError: 'held_out' without held-out examples, or a logical split
        the dataset has no split for.
    """
    if split in splits.LOGICAL_SPLITS:
      split = splits.tfds_split(self.builder.name, split, self.raw_splits())
    n = self.held_out_examples
    if split == splits.HELD_OUT:
      if not n:
        raise ValueError(f'split {split!r} of {self.name} is unknown; use one '
                         f'of {sorted(self.raw_splits())} or '
                         f'{splits.LOGICAL_SPLITS}, or {splits.HOLD_OUT_HINT}')
      return f'train[:{n}]'
    if split == 'train' and n:
      return f'train[{n}:]'
    return split  # TFDS validates (and slices) it when reading.

  def num_examples(self, split):
    """Number of examples in a split.

    Args:
      split: a logical or raw split name (see `resolve_split`).

    Returns:
      The number of examples (images) in the resolved split.

    Raises:
      ValueError: the split does not resolve.
    """
    split = self.resolve_split(split)
    return self.builder.info.splits[split].num_examples


def tfds_source(name: str, *, data_dir: str | None = None) -> TfdsSource:
  """A TFDS image-classification dataset; it must already be prepared.

  Imports tensorflow_datasets; nothing is downloaded or prepared here. A
  builder that is not prepared but reads all the same (under
  `tfds.testing.mock_data`) is taken; if it has no split sizes, it gets the
  real dataset's from `known_sizes.KNOWN_SIZES` (ImageNet's 1,281,167
  training images, say).

  Args:
    name: TFDS dataset name with optional config/version, e.g. 'cifar10' or
      'imagenet2012:5.1.0'.
    data_dir: TFDS data directory (None: TFDS's default,
      ~/tensorflow_datasets).

  Returns:
    A TfdsSource named 'tfds:<name>'; image and label keys are the
    builder's supervised keys ('image', 'label' when it has none).

  Raises:
    ValueError: `name` is not a TFDS dataset, or it is not prepared in
      `data_dir` (the message says how to prepare it).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f'tfds:{name} is not a TFDS dataset name; '
                     'tfds.list_builders() lists them (e.g. tfds:cifar10, '
                     'tfds:imagenet2012).') from None
  if not builder.is_prepared():
    try:  # readable all the same? (tfds.testing.mock_data makes data up)
      builder.as_dataset(split='train')
    except AssertionError:  # TFDS's "could not find data in <data_dir>"
      raise ValueError(_unprepared_message(builder, name, data_dir)) from None
  info = builder.info
  known = known_sizes.KNOWN_SIZES.get(f'tfds:{builder.name}')
  if not info.splits and known:  # no split metadata (mock_data): the sizes
    info.set_splits(tfds.core.SplitDict([  # known of the real dataset
        tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0)
        for s, n in known[0].items()]))
  image_key, label_key = info.supervised_keys or ('image', 'label')
  return TfdsSource(f'tfds:{name}', info.features[label_key].num_classes,
                    builder, image_key, label_key)


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
