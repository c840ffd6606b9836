"""TFDS datasets: `tfds:<name>`, prepared in a TFDS data directory.

TensorFlow and TFDS are imported lazily, by TFDS sources only.
"""
import dataclasses
import os

from byol_jax.data import splits


@dataclasses.dataclass
class TfdsSource(splits.Source):
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
  held_out_examples: int = 0

  def raw_splits(self):
    names = tuple(self.builder.info.splits)
    return names + (splits.HELD_OUT,) if self.held_out_examples else names

  def resolve_split(self, split):
    """The TFDS split string for `split` (logical, 'held_out' or TFDS's)."""
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
    split = self.resolve_split(split)
    return self.builder.info.splits[split].num_examples


def tfds_source(name: str, *, data_dir: str | None = None) -> TfdsSource:
  """A TFDS image-classification dataset; it must already be prepared."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f'tfds:{name} is not a TFDS dataset name; '
                     'tfds.list_builders() lists them (e.g. tfds:cifar10, '
                     'tfds:imagenet2012).') from None
  if not builder.is_prepared():
    raise ValueError(_unprepared_message(builder, name, data_dir))
  info = builder.info
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
