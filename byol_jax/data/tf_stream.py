"""The tf.data host streams of folder and TFDS sources (pipeline.py's contract).

TensorFlow is imported inside the functions, so the package imports without
it. A folder host streams its strided shard, each epoch in a stateless
permutation of (seed, epoch). TFRecord files have no random access, so a TFDS
host streams its contiguous slice's files in a per-epoch stateless order, 16
interleaved, then shuffled in windows of about 10 batches (TFDS files are
example-shuffled when prepared); resuming mid-epoch reads (not decodes) the
records before the position.
"""

import numpy as np

from byol_jax.data import crops
from byol_jax.data import sources


def _import_tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  try:  # the input pipeline must never take accelerator memory
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # already initialised
    pass
  return tf


def _fold(tf, seed, *data):
  for d in data:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
  return seed


def _decode_crop_resize(tf, image_bytes, box_fn, size):
  """The crop box_fn(height, width) (JPEG: only it decoded), resized, [0, 1]."""

  def box(shape):
    h, w = (tf.cast(shape[i], tf.float64) for i in (0, 1))
    return [tf.cast(v, tf.int32) for v in box_fn(h, w)]

  def jpeg():
    shape = tf.io.extract_jpeg_shape(image_bytes)
    window = tf.stack(box(shape))
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def other():  # PNG: decode all, then crop
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    y0, x0, ch, cw = box(tf.shape(image))
    return image[y0 : y0 + ch, x0 : x0 + cw]

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  # Bicubic then clip, as the official byol/utils/dataset.py.
  image = tf.image.resize(image, [size, size], method='bicubic')
  return tf.ensure_shape(
      tf.clip_by_value(image / 255.0, 0.0, 1.0), [size] * 2 + [3]
  )


def _epochs(tf, epoch, start_pos, n):
  """The epochs' elements from stream position start_pos on."""
  e0, offset = divmod(start_pos, n)
  return tf.data.Dataset.range(e0, 2**62).flat_map(epoch).skip(offset)


def _folder_stream(tf, source, split, layout, seed, start_pos):
  """(epoch, global index, payload) elements and payload -> (bytes, label)."""
  paths = tf.constant(source.files[split])
  labels = tf.constant(source.labels[split])
  shard = tf.constant(layout.shard(len(source.files[split])), tf.int64)
  load = lambda i: (tf.io.read_file(paths[i]), labels[i])
  if seed is None:
    ds = tf.data.Dataset.from_tensor_slices(shard)
    return ds.map(lambda i: (tf.constant(0, tf.int64), i, i)), load

  def epoch(e):
    perm = tf.random.experimental.stateless_shuffle(
        shard, seed=_fold(tf, seed, crops.SALT_PERM, e)
    )
    return tf.data.Dataset.from_tensor_slices(perm).map(lambda i: (e, i, i))

  return _epochs(tf, epoch, start_pos, shard.shape[0]), load


def _tfds_host_split(source, split, layout):
  """This host's contiguous slice of `split`: (split string, start, size)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  splits = source.builder.info.splits
  parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(splits)
  if len(parts) != 1:
    raise ValueError(
        f'split {split!r} of {source.name}: use one split (with an optional '
        "slice such as 'train[10000:]'), not a sum"
    )
  name = parts[0].splitname
  lo = parts[0].from_ or 0
  n = (splits[name].num_examples if parts[0].to is None else parts[0].to) - lo
  start = lo + layout.index * n // layout.count
  end = lo + (layout.index + 1) * n // layout.count
  return f'{name}[{start}:{end}]', start, end - start


def _window_shuffle(tf, ds, window, seed):
  """Stateless shuffle of each consecutive window of `window` elements."""

  def shuffle(w, batch):
    n = tf.shape(tf.nest.flatten(batch)[0], out_type=tf.int64)[0]
    perm = tf.random.experimental.stateless_shuffle(
        tf.range(n), seed=_fold(tf, seed, w)
    )
    return tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda t: tf.gather(t, perm), batch)
    )

  return ds.batch(window).enumerate().flat_map(shuffle)


def _same(payload):
  return payload


def _tfds_stream(tf, source, split, layout, seed, start_pos):
  """Like _folder_stream for a TFDS split (see module docstring)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder, ik, lk = source.builder, source.image_key, source.label_key
  decoders = {ik: tfds.decode.SkipDecoding()}
  host_split, start, n = _tfds_host_split(source, split, layout)
  if n == 0:
    raise ValueError(
        f'{source.name} split {split!r} has no examples for process '
        f'{layout.index} of {layout.count}'
    )
  # (global index, (bytes, label)) in file order
  records = (
      builder.as_dataset(
          split=host_split, shuffle_files=False, decoders=decoders
      )
      .map(lambda ex: (ex[ik], ex[lk]))
      .enumerate()
      .map(lambda j, p: (start + j, p))
  )
  if seed is None:
    return records.map(lambda i, p: (tf.constant(0, tf.int64), i, p)), _same
  # Shuffle window: ~10 batches of records (the official code's 10 * batch).
  window = int(np.clip(10 * layout.host_batch, 1024, 10_000))
  shuffled = lambda ds, e: _window_shuffle(
      tf, ds, window, _fold(tf, seed, crops.SALT_WINDOW, e)
  ).map(lambda i, p: (e, i, p))
  file_format = getattr(builder.info, 'file_format', None)
  if 'tfrecord' not in str(file_format).lower() or not builder.is_prepared():
    # No file-level shuffle (or no files: tfds.testing.mock_data's builders
    # read through as_dataset only); window shuffle only.
    return _epochs(tf, lambda e: shuffled(records, e), start_pos, n), _same
  fis = builder.info.splits[host_split].file_instructions
  names = tf.constant([str(fi.filename) for fi in fis])
  skips = tf.constant([fi.skip for fi in fis], tf.int64)
  takes = tf.constant([fi.take for fi in fis], tf.int64)
  firsts = start + np.cumsum([0] + [fi.take for fi in fis])[:-1]
  firsts = tf.constant(firsts, tf.int64)

  def read(f):
    ds = tf.data.TFRecordDataset(names[f]).skip(skips[f]).take(takes[f])
    return ds.enumerate().map(lambda j, rec: (firsts[f] + j, rec))

  def epoch(e):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(len(fis), dtype=tf.int64),
        seed=_fold(tf, seed, crops.SALT_FILES, e),
    )
    recs = tf.data.Dataset.from_tensor_slices(order).interleave(
        read,
        cycle_length=min(16, len(fis)),
        num_parallel_calls=min(16, len(fis)),
        deterministic=True,
    )
    return shuffled(recs, e)

  def load(rec):
    ex = builder.info.features.deserialize_example(rec, decoders=decoders)
    return ex[ik], ex[lk]

  return _epochs(tf, epoch, start_pos, n), load


def _stream(tf, source, *args):
  if isinstance(source, sources.FolderSource):
    return _folder_stream(tf, source, *args)
  return _tfds_stream(tf, source, *args)


def _batches(tf, stream, example, layout, num_threads, pad=None, batches=0):
  """example(bytes, label, epoch, index) of a stream's elements in numpy
  [devices, per_device, ...] batches; pad: `batches` of them, padded (eval)."""
  ds, load = stream
  ds = ds.map(
      lambda e, i, payload: example(*load(payload), e, i),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
  )
  # Files the source's validation missed: dropped (TF logs each), not fatal.
  ds = ds.ignore_errors(log_warning=True)
  if pad is not None:
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat())
    ds = ds.take(batches * layout.host_batch)
  shape = [layout.devices, layout.per_device]
  reshape = lambda v: tf.reshape(v, tf.concat([shape, tf.shape(v)[1:]], 0))
  ds = ds.batch(layout.host_batch, drop_remainder=True)
  ds = ds.map(lambda b: {k: reshape(v) for k, v in b.items()})
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  if num_threads:
    options.threading.private_threadpool_size = num_threads
    options.threading.max_intra_op_parallelism = 1
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(options)
  yield from ds.as_numpy_iterator()


def random_iterator(source, split, layout, seed, start_step, num_threads, crop):
  """pipeline.make_pretrain_iterator's stream of a resolved split, numpy.

  crop: {'size', 'views', 'flip', 'min_area'}, as pipeline's.
  """
  tf = _import_tf()
  seed = tf.constant([seed, 0], tf.int64)

  def crop_views(image_bytes, label, e, i):
    example_seed = _fold(tf, seed, crops.SALT_CROP, e, i)
    out = {'label': tf.cast(label, tf.int32)}
    for v in range(crop['views']):
      u = tf.random.stateless_uniform(
          [crops.NUM_U + 1], _fold(tf, example_seed, v), dtype=tf.float64
      )
      box = lambda h, w, u=u: crops.sample_crop(
          tf.math, u[: crops.NUM_U], h, w, crop['min_area']
      )
      image = _decode_crop_resize(tf, image_bytes, box, crop['size'])
      if crop['flip']:
        image = tf.where(u[crops.NUM_U] < 0.5, tf.reverse(image, [1]), image)
      out[f'view{v + 1}'] = image
    return out

  start = start_step * layout.host_batch
  stream = _stream(tf, source, split, layout, seed, start)
  return _batches(tf, stream, crop_views, layout, num_threads)


def eval_iterator(source, split, layout, image_size, num_threads, num_batches):
  """pipeline.make_eval_iterator's pass over a resolved split, numpy."""
  tf = _import_tf()
  box = lambda h, w: crops.center_crop(tf.math, h, w, image_size)

  def center(image_bytes, label, e, i):
    del e, i
    image = _decode_crop_resize(tf, image_bytes, box, image_size)
    return {'image': image, 'label': tf.cast(label, tf.int32), 'mask': True}

  pad = {'image': tf.zeros([image_size] * 2 + [3]), 'label': 0, 'mask': False}
  stream = _stream(tf, source, split, layout, None, 0)
  return _batches(tf, stream, center, layout, num_threads, pad, num_batches)
