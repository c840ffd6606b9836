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


def _tf_decode_crop(tf, image_bytes, box_fn):
  """Decodes the crop box_fn(height, width); for JPEG only the crop."""
  box_fn = lambda h, w, f=box_fn: tuple(
      tf.cast(v, tf.int64)
      for v in f(tf.cast(h, tf.float64), tf.cast(w, tf.float64))
  )

  def jpeg():
    shape = tf.io.extract_jpeg_shape(image_bytes, output_type=tf.int64)
    window = tf.cast(tf.stack(box_fn(shape[0], shape[1])), tf.int32)
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def other():  # PNG etc.: decode all, then crop
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    shape = tf.shape(image, out_type=tf.int64)
    y0, x0, ch, cw = box_fn(shape[0], shape[1])
    return image[y0 : y0 + ch, x0 : x0 + cw]

  return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)


def _tf_resize(tf, image, size):
  # Bicubic then clip, as the official byol/utils/dataset.py.
  image = tf.image.resize(image, [size, size], method='bicubic')
  return tf.ensure_shape(
      tf.clip_by_value(image / 255.0, 0.0, 1.0), [size, size, 3]
  )


def _tf_folder_stream(tf, source, split, layout, seed, start_pos, shuffle):
  """(epoch, global index, payload) elements and payload -> (bytes, label)."""
  paths = tf.constant(source.files[split])
  labels = tf.constant(source.labels[split])
  shard = layout.shard(len(source.files[split]))
  load = lambda i: (tf.io.read_file(paths[i]), labels[i])
  if not shuffle:
    ds = tf.data.Dataset.from_tensor_slices(shard)
    return ds.map(lambda i: (tf.constant(0, tf.int64), i, i)), load, len(shard)
  e0, offset = divmod(start_pos, len(shard))
  shard_t = tf.constant(shard, tf.int64)

  def epoch(e):
    perm = tf.random.experimental.stateless_shuffle(
        shard_t, seed=_fold(tf, seed, crops.SALT_PERM, e)
    )
    return tf.data.Dataset.from_tensor_slices(perm).map(lambda i: (e, i, i))

  ds = tf.data.Dataset.range(e0, 2**62).flat_map(epoch).skip(offset)
  return ds, load, len(shard)


def _tfds_host_split(source, split, layout):
  """This host's contiguous slice of `split`: (split string, start, size)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  splits = source.builder.info.splits
  parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(splits)
  if len(parts) != 1:
    raise ValueError(
        f'split {split!r} of {source.name}: use one split (with '
        "an optional slice such as 'train[10000:]'), not a sum"
    )
  name = parts[0].splitname
  lo = parts[0].from_ or 0
  hi = splits[name].num_examples if parts[0].to is None else parts[0].to
  n = hi - lo
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


def _tf_tfds_stream(tf, source, split, layout, seed, start_pos, shuffle):
  """Like _tf_folder_stream for a TFDS split (see module docstring)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder, ik, lk = source.builder, source.image_key, source.label_key
  decoders = {ik: tfds.decode.SkipDecoding()}
  host_split, start, n = _tfds_host_split(source, split, layout)
  if n == 0:
    raise ValueError(
        f'{source.name} split {split!r} has no examples for '
        f'process {layout.index} of {layout.count}'
    )

  def records():  # (global index, (bytes, label)) in file order
    ds = builder.as_dataset(
        split=host_split, shuffle_files=False, decoders=decoders
    )
    ds = ds.map(lambda ex: (ex[ik], ex[lk])).enumerate()
    return ds.map(lambda j, p: (start + j, p))

  identity = lambda p: p
  if not shuffle:
    return (
        records().map(lambda i, p: (tf.constant(0, tf.int64), i, p)),
        identity,
        n,
    )
  # Shuffle window: ~10 batches of records (the official code's 10 * batch).
  window = int(np.clip(10 * layout.host_batch, 1024, 10_000))
  file_format = getattr(builder.info, 'file_format', None)
  if 'tfrecord' not in str(file_format).lower() or not builder.is_prepared():
    # No file-level shuffle (or no files: tfds.testing.mock_data's builders
    # read through as_dataset only); window shuffle only.
    base = records()
    epoch = lambda e: _window_shuffle(
        tf, base, window, _fold(tf, seed, crops.SALT_WINDOW, e)
    ).map(lambda i, p: (e, i, p))
    load = identity
  else:
    fis = builder.info.splits[host_split].file_instructions
    names = tf.constant([str(fi.filename) for fi in fis])
    skips = tf.constant([fi.skip for fi in fis], tf.int64)
    takes = tf.constant([fi.take for fi in fis], tf.int64)
    starts = tf.constant(
        start + np.cumsum([0] + [fi.take for fi in fis])[:-1], tf.int64
    )

    def read(f):
      ds = tf.data.TFRecordDataset(names[f]).skip(skips[f]).take(takes[f])
      return ds.enumerate().map(lambda j, rec: (starts[f] + j, rec))

    def epoch(e):
      order = tf.random.experimental.stateless_shuffle(
          tf.range(len(fis), dtype=tf.int64),
          seed=_fold(tf, seed, crops.SALT_FILES, e),
      )
      recs = tf.data.Dataset.from_tensor_slices(order).interleave(
          read,
          cycle_length=min(16, len(fis)),
          block_length=1,
          num_parallel_calls=min(16, len(fis)),
          deterministic=True,
      )
      return _window_shuffle(
          tf, recs, window, _fold(tf, seed, crops.SALT_WINDOW, e)
      ).map(lambda i, rec: (e, i, rec))

    def load(rec):
      ex = builder.info.features.deserialize_example(rec, decoders=decoders)
      return ex[ik], ex[lk]

  e0, offset = divmod(start_pos, n)
  ds = tf.data.Dataset.range(e0, 2**62).flat_map(epoch).skip(offset)
  return ds, load, n


def _tf_stream(tf, source, *args, **kwargs):
  stream = (
      _tf_folder_stream
      if isinstance(source, sources.FolderSource)
      else _tf_tfds_stream
  )
  return stream(tf, source, *args, **kwargs)


def _tf_finish(tf, ds, layout, num_threads):
  """Batch to [devices, per_device, ...], prefetch, numpy iterator."""
  ds = ds.batch(layout.host_batch, drop_remainder=True)
  ds = ds.map(
      lambda b: {
          k: tf.reshape(
              v,
              tf.concat(
                  [[layout.devices, layout.per_device], tf.shape(v)[1:]], 0
              ),
          )
          for k, v in b.items()
      }
  )
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  if num_threads:
    options.threading.private_threadpool_size = num_threads
    options.threading.max_intra_op_parallelism = 1
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(options)
  yield from ds.as_numpy_iterator()


def random_iterator(
    source,
    split,
    layout,
    seed,
    start_step,
    image_size,
    views,
    flip,
    num_threads,
    min_area=crops.AREA_RANGE[0],
):
  """pipeline.make_pretrain_iterator's stream of a resolved split, numpy."""
  tf = _import_tf()
  seed_t = tf.constant([seed, 0], tf.int64)
  ds, load, _ = _tf_stream(
      tf,
      source,
      split,
      layout,
      seed_t,
      start_step * layout.host_batch,
      shuffle=True,
  )

  def crop_views(e, i, payload):
    image_bytes, label = load(payload)
    example_seed = _fold(tf, seed_t, crops.SALT_CROP, e, i)
    out = {}
    for v in range(views):
      u = tf.random.stateless_uniform(
          [crops.NUM_U + 1], _fold(tf, example_seed, v), dtype=tf.float64
      )
      box = lambda h, w, u=u: crops.sample_crop(
          tf.math, u[: crops.NUM_U], h, w, min_area
      )
      image = _tf_resize(tf, _tf_decode_crop(tf, image_bytes, box), image_size)
      if flip:
        image = tf.where(u[crops.NUM_U] < 0.5, tf.reverse(image, [1]), image)
      out[f'view{v + 1}'] = image
    out['label'] = tf.cast(label, tf.int32)
    return out

  ds = ds.map(
      crop_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
  )
  # Files the source's validation missed: dropped (TF logs each), not fatal.
  ds = ds.ignore_errors(log_warning=True)
  return _tf_finish(tf, ds, layout, num_threads)


def eval_iterator(source, split, layout, image_size, num_threads, num_batches):
  """pipeline.make_eval_iterator's pass over a resolved split, numpy."""
  tf = _import_tf()
  ds, load, _ = _tf_stream(tf, source, split, layout, None, 0, shuffle=False)
  box = lambda h, w: crops.center_crop(tf.math, h, w, image_size)

  def center(e, i, payload):
    del e, i
    image_bytes, label = load(payload)
    image = _tf_resize(tf, _tf_decode_crop(tf, image_bytes, box), image_size)
    return {
        'image': image,
        'label': tf.cast(label, tf.int32),
        'mask': tf.constant(True),
    }

  ds = ds.map(center, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors(log_warning=True)
  pad = tf.data.Dataset.from_tensors(
      {
          'image': tf.zeros([image_size, image_size, 3]),
          'label': tf.constant(0, tf.int32),
          'mask': tf.constant(False),
      }
  ).repeat()
  ds = ds.concatenate(pad).take(num_batches * layout.host_batch)
  return _tf_finish(tf, ds, layout, num_threads)
