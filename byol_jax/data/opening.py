"""Opening a run's data source, and the path its images take.

`open_source(config.data, read_data)` opens `data.source`, carves
`data.held_out_examples` out of train and chooses the data path (the
config's `derived.data_path`):

  IN_MEMORY: digits, synthetic, and image folders and TFDS datasets whose
    decoded size is at most data.max_in_memory_mb: decoded once (folders
    with Pillow through the disk cache, TFDS through tfds.as_numpy) and
    cropped on the devices (in_memory.py);
  STREAMING: larger folders and TFDS datasets, through tf.data
    (tf_stream.py); refused in one line when TensorFlow is not importable.

Errors are validation.ConfigError (one line, naming data.source).
"""

from byol_jax.data import sources
from byol_jax.validation import ConfigError

# derived.data_path: decoded once and cropped on the devices, or tf.data.
IN_MEMORY, STREAMING = 'in_memory', 'streaming'


def tensorflow_importable() -> bool:
  """Whether `import tensorflow` can work, without importing it.

  (Importing TensorFlow takes seconds; finding its spec does not.)

  Returns:
    False when TensorFlow is not installed or sys.modules['tensorflow'] is
    None (how tests hide it), else True.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  try:
    return importlib.util.find_spec('tensorflow') is not None
  except (ImportError, ValueError):  # sys.modules['tensorflow'] = None
    return False


def open_source(data, read_data: bool):
  """Opens data.source and chooses the path its images take.

  Image folders and TFDS datasets whose decoded size fits
  data.max_in_memory_mb become an InMemorySource (folders decoded once with
  Pillow and cached on disk; TFDS through tfds.as_numpy); larger ones
  stream. With read_data=False nothing is decoded: the path is decided from
  the folder's listing (and one file's header) or the dataset's metadata.
  `data.held_out_examples` are carved as each source kind defines them
  (sources.hold_out): from the in-memory folder, from TFDS's train split
  before it is read.

  Args:
    data: the config's `data` section (source, data_dir, held_out_examples,
      max_in_memory_mb, cache_side, cache_dir).
    read_data: decode the images (a run) or only size them (--dry_run,
      `build`).

  Returns:
    (source, path, megabytes): the opened source (an InMemorySource on the
    in-memory path when read_data; else a FolderSource, TfdsSource or
    known_sizes.SizedSource), IN_MEMORY or STREAMING, and the decoded size
    in MiB (float, one decimal) for folders and TFDS datasets, None for
    digits and synthetic or when the size is unknown.

  Raises:
    ConfigError: the source cannot be opened, or it needs TensorFlow (TFDS,
      or a folder that must stream) and TensorFlow is not importable.
  """
  # pylint: disable-next=g-import-not-at-top
  from byol_jax.data import memory_sources
  spec = data.source
  kind = spec.partition(':')[0]
  if kind == 'tfds' and not tensorflow_importable():
    raise ConfigError(
        f'data.source={spec!r}: TFDS datasets need TensorFlow, which is not '
        'importable; install it (pip install tensorflow-cpu), or train on an '
        'image folder (folder:<path>), digits or synthetic.')
  limit = data.max_in_memory_mb * 2**20
  megabytes = None

  def hold(source):
    if not data.held_out_examples:
      return source
    try:
      return sources.hold_out(source, data.held_out_examples)
    except ValueError as e:
      raise ConfigError(f'data.held_out_examples={data.held_out_examples}: '
                        f'{e}') from None

  try:
    known = None if read_data else sources.known_source(spec)
    source = known or sources.get_source(spec, data_dir=data.data_dir or None,
                                         validate_files=False)
    if isinstance(source, sources.FolderSource):
      size = memory_sources.decoded_bytes(source, data.cache_side)
      fits = size is not None and size <= limit
      if read_data and fits:
        source = memory_sources.in_memory_folder(
            source, side=data.cache_side, cache_dir=data.cache_dir)
      elif read_data:  # streams: leave out what tf.data cannot decode
        source = sources.get_source(spec)
      source = hold(source)
    elif kind == 'tfds':
      source = hold(source)  # TFDS's own train[:N] slicing
      size = memory_sources.tfds_decoded_bytes(source, data.cache_side)
      fits = size is not None and size <= limit
      if read_data and fits:
        source = memory_sources.in_memory_tfds(source,
                                               side=data.cache_side)
    else:
      size, fits = None, True  # digits, synthetic
      source = hold(source)
  except ConfigError:
    raise
  except (ValueError, FileNotFoundError, OSError) as e:
    raise ConfigError(f'data.source={spec!r}: {e}') from None
  if size is not None:
    megabytes = round(size / 2**20, 1)
  path = IN_MEMORY if fits else STREAMING
  if path == STREAMING and not tensorflow_importable():
    raise ConfigError(
        f'data.source={spec!r}: its decoded size ({megabytes} MiB) is above '
        f'data.max_in_memory_mb={data.max_in_memory_mb}, so it streams '
        'through tf.data, and TensorFlow is not importable; install it (pip '
        'install tensorflow-cpu), or use an image folder that fits in memory '
        '(raise --config.data.max_in_memory_mb, or lower '
        '--config.data.cache_side).')
  return source, path, megabytes


def data_path_of(source) -> str:
  """The data path of an already-opened source.

  Args:
    source: a source as `open_source` returned it.

  Returns:
    IN_MEMORY for an InMemorySource, else STREAMING.
  """
  return IN_MEMORY if isinstance(source, sources.InMemorySource) else STREAMING
