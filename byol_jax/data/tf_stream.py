"""tf.data host streams of folder and TFDS sources (pipeline.py's contract).

A TFDS host (TFRecords: no random access) streams its contiguous slice: resuming
mid-epoch reads, not decodes, the records before.
"""

import contextlib

import numpy as np

from byol_jax.data import crops
from byol_jax.data import sources


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
    window = tf.stack(box(tf.io.extract_jpeg_shape(image_bytes)))
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def other():  # PNG: decode all, then crop
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return tf.image.crop_to_bounding_box(image, *box(tf.shape(image)))

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  image = tf.image.resize(image, [size, size], method='bicubic') / 255.0
  return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), [size, size, 3])


def _stream(tf, source, split, layout, seed):
  """(epoch e -> its (e, index, payload) elements, examples per epoch, payload
  -> (image bytes, label)); seed None: one pass in file order."""
  shuffle = tf.random.experimental.stateless_shuffle
  slices = tf.data.Dataset.from_tensor_slices
  if isinstance(source, sources.FolderSource):
    paths = tf.constant(source.files[split])
    labels = tf.constant(source.labels[split])
    shard = tf.constant(layout.shard(len(source.files[split])), tf.int64)

    def epoch(e):
      order = shard
      if seed is not None:  # a stateless permutation of the shard
        order = shuffle(shard, seed=_fold(tf, seed, crops.SALT_PERM, e))
      return slices(order).map(lambda i: (e, i, i))

    load = lambda i: (tf.io.read_file(paths[i]), labels[i])
    return epoch, shard.shape[0], load

  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder, ik, lk = source.builder, source.image_key, source.label_key
  decoders = {ik: tfds.decode.SkipDecoding()}
  splits = builder.info.splits
  parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(splits)
  if len(parts) != 1:
    raise ValueError(
        f'split {split!r} of {source.name}: use one split (with an optional '
        "slice such as 'train[10000:]'), not a sum"
    )
  name, lo, to = parts[0].splitname, parts[0].from_ or 0, parts[0].to
  total = (splits[name].num_examples if to is None else to) - lo
  start = lo + layout.index * total // layout.count
  n = lo + (layout.index + 1) * total // layout.count - start
  if n == 0:
    raise ValueError(
        f'{source.name} split {split!r} has no examples for process '
        f'{layout.index} of {layout.count}'
    )
  host_split = f'{name}[{start}:{start + n}]'
  file_format = str(getattr(builder.info, 'file_format', None)).lower()
  if 'tfrecord' in file_format and builder.is_prepared():
    fis = splits[host_split].file_instructions
    names = tf.constant([str(fi.filename) for fi in fis])
    skips = tf.constant([fi.skip for fi in fis], tf.int64)
    takes = tf.constant([fi.take for fi in fis], tf.int64)
    firsts = start + tf.math.cumsum(takes, exclusive=True)

    def read(f):  # (global index, record) of file f
      ds = tf.data.TFRecordDataset(names[f]).skip(skips[f]).take(takes[f])
      return ds.enumerate(firsts[f])

    def load(rec):
      ex = builder.info.features.deserialize_example(rec, decoders=decoders)
      return ex[ik], ex[lk]

    num_files = len(fis)
  else:  # no files to shuffle (tfds.testing.mock_data's builders): one part
    records = builder.as_dataset(
        split=host_split, shuffle_files=False, decoders=decoders
    )
    read = lambda f: records.map(lambda ex: (ex[ik], ex[lk])).enumerate(start)
    load, num_files = (lambda p: p), 1
  # Shuffle window: ~10 batches of records (the official code's 10 * batch).
  window = int(np.clip(10 * layout.host_batch, 1024, 10_000))
  k = min(16, num_files)  # files interleaved

  def epoch(e):  # files in a stateless order, 16 interleaved, then windows
    order = tf.range(num_files, dtype=tf.int64)
    if seed is None:
      return slices(order).flat_map(read).map(lambda i, p: (e, i, p))
    order = shuffle(order, seed=_fold(tf, seed, crops.SALT_FILES, e))
    recs = slices(order).interleave(
        read, cycle_length=k, num_parallel_calls=k, deterministic=True
    )

    def window_shuffle(w, batch):
      perm = shuffle(
          tf.range(tf.shape(batch[0], out_type=tf.int64)[0]),
          seed=_fold(tf, seed, crops.SALT_WINDOW, e, w),
      )
      return slices(tf.nest.map_structure(lambda t: tf.gather(t, perm), batch))

    recs = recs.batch(window).enumerate().flat_map(window_shuffle)
    return recs.map(lambda i, p: (e, i, p))

  return epoch, n, load


def _batches(source, split, layout, num_threads, seed, start, example, pad=0):
  """Numpy batches of example(tf, bytes, label, seed, epoch, index); pad."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  with contextlib.suppress(RuntimeError):  # RuntimeError: TF initialised
    tf.config.set_visible_devices([], 'GPU')  # input never takes GPU memory
  seed = None if seed is None else tf.constant([seed, 0], tf.int64)
  epoch, n, load = _stream(tf, source, split, layout, seed)
  last = 1 if seed is None else 2**62  # eval: one pass
  ds = tf.data.Dataset.range(start // n, last).flat_map(epoch).skip(start % n)
  ds = ds.map(
      lambda e, i, payload: example(tf, *load(payload), seed, e, i),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
  )
  # Files the source's validation missed: dropped (TF logs each), not fatal.
  ds = ds.ignore_errors(log_warning=True)
  if pad:
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad[0](tf)).repeat())
    ds = ds.take(pad[1] * layout.host_batch)
  ds = ds.batch(layout.host_batch, drop_remainder=True)
  options = tf.data.Options()  # deterministic and parallel maps: the defaults
  if num_threads:
    options.threading.private_threadpool_size = num_threads
    options.threading.max_intra_op_parallelism = 1
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(options)

  def numpy_batches():  # tf.data starts on the first batch asked for
    shape = (layout.devices, layout.per_device)
    for b in ds.as_numpy_iterator():
      yield {k: v.reshape(shape + v.shape[1:]) for k, v in b.items()}

  return numpy_batches()


def random_iterator(source, split, layout, seed, start_step, num_threads, crop):
  """make_pretrain_iterator's stream; crop: {size, views, flip, min_area}."""

  def crop_views(tf, image_bytes, label, seed, e, i):
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
  return _batches(source, split, layout, num_threads, seed, start, crop_views)


def eval_iterator(source, split, layout, image_size, num_threads, num_batches):
  """pipeline.make_eval_iterator's pass over a resolved split, numpy."""

  def center(tf, image_bytes, label, *unused_seed_epoch_index):
    box = lambda h, w: crops.center_crop(tf.math, h, w, image_size)
    image = _decode_crop_resize(tf, image_bytes, box, image_size)
    return {'image': image, 'label': tf.cast(label, tf.int32), 'mask': True}

  zeros = [image_size, image_size, 3]
  pad = lambda tf: {'image': tf.zeros(zeros), 'label': 0, 'mask': False}
  args = (source, split, layout, num_threads, None, 0, center)
  return _batches(*args, (pad, num_batches))
