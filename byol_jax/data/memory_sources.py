"""Sources that fit in memory: their decoded size, and the arrays once decoded.

plan.py holds a dataset in memory (cropped on the devices, `in_memory.py`)
when its decoded uint8 size is at most `data.max_in_memory_mb`:

  * image folders (`sources.FolderSource`): `decoded_bytes` from the listing
    and one file's header; `in_memory_folder` decodes them once with Pillow
    and caches the arrays on disk (`image_cache.py`). No TensorFlow.
  * small TFDS datasets (`sources.TfdsSource`): `tfds_decoded_bytes` from
    their metadata; `in_memory_tfds` decodes them through tfds.as_numpy at
    start-up (TFDS's prepared files are the cache). Needs TensorFlow.

Each returns a `sources.InMemorySource` with the same name, classes and raw
splits as the source it was made from.
"""
from absl import logging
import numpy as np

from byol_jax.data import image_cache
from byol_jax.data import sources


def decoded_bytes(source: sources.FolderSource, side: int = 0) -> int | None:
  """Bytes of the folder's images as uint8 arrays, from its listing.

  Args:
    source: a `FolderSource` (validated or only listed).
    side: the cache side (`in_memory_folder`); 0: the images' own size, read
      from the first readable file's header (all must share it).

  Returns:
    The size in bytes, or None when no header could be read.
  """
  n = sum(len(f) for f in source.files.values())
  if side:
    return n * side * side * 3
  shape = image_cache.image_shape(list(source.files['train']))
  return None if shape is None else n * shape[0] * shape[1] * 3


def tfds_decoded_bytes(source: 'sources.TfdsSource | sources.SizedSource',
                       side: int = 0) -> int | None:
  """Bytes of every split of a TFDS source as uint8 RGB arrays.

  Args:
    source: a `TfdsSource` (sizes and image shape from its metadata) or the
      `SizedSource` stand-in of a known one (`sources.KNOWN_IMAGE_SHAPES`).
    side: the side the images would be held at (0: their own size).

  Returns:
    The size in bytes, or None when the images have no one size (and side
    is 0) or it is not known.
  """
  if side:
    pixels = side * side
  else:
    if isinstance(source, sources.SizedSource):
      shape = sources.KNOWN_IMAGE_SHAPES.get(source.name)
    else:
      shape = source.builder.info.features[source.image_key].shape[:2]
    if shape is None or None in shape:
      return None
    pixels = shape[0] * shape[1]
  return 3 * pixels * sum(source.num_examples(s) for s in source.raw_splits())


def in_memory_tfds(source: sources.TfdsSource, *,
                   side: int = 0) -> sources.InMemorySource:
  """A (small) TFDS dataset decoded once through tfds.as_numpy, in memory.

  Every raw split (with `hold_out`'s 'held_out' = TFDS's train[:N] and
  'train' = train[N:]) is read in file order. Grayscale images become RGB.
  Needs TensorFlow (TFDS decodes); decoded at every start (TFDS's prepared
  files are already the cache).

  Args:
    source: a `TfdsSource`.
    side: 0 to keep the images' own size (all must share it, as CIFAR's and
      STL-10's do); S > 0: shorter side resized to S, central S x S square.

  Returns:
    An `InMemorySource` with the same name, classes and raw splits.

  Raises:
    ValueError: (side 0) images of different sizes.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  images, labels = {}, {}
  for raw in source.raw_splits():
    ds = source.builder.as_dataset(split=source.resolve_split(raw),
                                   shuffle_files=False)
    xs, ys = [], []
    for ex in tfds.as_numpy(ds):
      x = ex[source.image_key]
      if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
      xs.append(image_cache.square(x, side) if side else x)
      ys.append(ex[source.label_key])
    shapes = sorted({x.shape[:2] for x in xs})
    if len(shapes) > 1:
      raise ValueError(
          f'{source.name} split {raw!r}: images have different sizes (e.g. '
          f'{shapes[0]} and {shapes[-1]}); set --config.data.cache_side=N to '
          'hold them at N x N, or stream it with '
          '--config.data.max_in_memory_mb=0')
    images[raw] = np.stack(xs).astype(np.uint8)
    labels[raw] = np.asarray(ys, np.int32)
    logging.info('%s split %r: %d images held in memory as %s uint8 '
                 '(%.1f MB), decoded through tfds.as_numpy', source.name, raw,
                 len(xs), 'x'.join(map(str, images[raw].shape[1:3])),
                 images[raw].nbytes / 2**20)
  return sources.InMemorySource(source.name, source.num_classes, images,
                                labels)


def in_memory_folder(source: sources.FolderSource, *, side: int = 0,
                     cache_dir: str = '') -> sources.InMemorySource:
  """The folder's images decoded once (Pillow) and held as uint8 arrays.

  Read from the on-disk cache when the folder is unchanged (image_cache.py:
  keyed by every file's path, size and mtime; a corrupt cache is rebuilt).
  Files Pillow cannot decode, or that are not JPEG/PNG, are left out and
  counted in `num_skipped` (and logged).

  Args:
    source: a `FolderSource`, typically only listed (validate_files=False).
    side: 0 to keep the images' own size (all must share it); S > 0: the
      shorter side resized to S and the central S x S square kept.
    cache_dir: the cache's parent directory ('' for the default,
      image_cache.default_cache_dir()).

  Returns:
    An `InMemorySource` with the same name, classes and splits.

  Raises:
    ValueError: a split with no decodable image, or (side 0) images of
      different sizes.
  """
  arrays = image_cache.folder_arrays(
      source.root, source.files, source.labels, source.class_names,
      side=side, cache_dir=cache_dir)
  return sources.InMemorySource(
      source.name, source.num_classes, dict(arrays.images),
      dict(arrays.labels), dict(arrays.num_skipped), arrays.path)
