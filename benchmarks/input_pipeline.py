r"""Input-pipeline throughput: in memory on the devices; tf.data on the host.

In memory (`byol_jax/data/pipeline.py`; what digits, synthetic data and
image folders that fit use): the uint8 dataset sits on the device; a step
gathers its examples, cuts two random-resized crops per image, resizes and
then applies BYOL's colour augmentations to both views
(`augment.augment_examples`, what the training step runs first). Measured:
that input work alone, the ResNet step excluded, as images (examples, each
two views) per second on the device JAX picks (`--in_memory_devices` of
them), after compilation.
Datasets: CIFAR-10 from its JPEG folders (`--cifar`: the folder or its
.tar.gz, unpacked once; by default ../shared/data/cifar10-jpg when present;
decoded once into a cache) at 32 px, and synthetic 224 px images. Target on
one H100/H200: >= 50,000 images/s at 32 px, so input is never the
bottleneck of ResNet-18 BYOL (> 15,000 images/s).

Streaming (`byol_jax/data/tf_stream.py`, ImageNet-size folders and TFDS;
needs TensorFlow): read, decode, random-resized crop and resize on the host
CPU, batched, on

  * CIFAR-10 as JPEG folders, 32px, two views per image;
  * ImageNet-sized JPEGs: a few hundred ~500x375 crops of the real photos
    that scikit-image ships, quality 95, in 10 class folders (made in a temp
    dir), 224px, two views (pre-training) and one centre crop (eval).

A pre-training "image" yields two views. `threads` is tf.data's private pool
size. images_per_sec is wall-clock; images_per_sec_per_core is images per
CPU-second of the whole process (time.process_time: all its threads), i.e.
the rate one fully used core gives; it is robust to other load on a shared
machine, wall-clock numbers are not.

    python -m benchmarks.input_pipeline            # writes benchmarks/results/
    python -m benchmarks.input_pipeline --batches 5 --no_write   # smoke run
    python -m benchmarks.input_pipeline --skip_streaming \
        --cifar=.gpu_data/cifar10-jpg.tar.gz --out=$OUT          # a GPU
"""

import hashlib
import io
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

from absl import flags
import numpy as np

from benchmarks import _cli
from benchmarks import _results

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR_TARBALL = (
    REPO.parent / 'shared' / 'data' / 'cifar10-jpg' / 'cifar10-jpg.tar.gz'
)
# --cifar=none: no CIFAR-10 rows (the device suite without --data_dir).
NO_CIFAR = 'none'
PHOTOS = (
    'astronaut',
    'chelsea',
    'coffee',
    'rocket',
    'retina',
    'hubble_deep_field',
    'immunohistochemistry',
    'stereo_motorcycle',
)


def make_imagenet_sized(root, num_images=320, num_classes=10, seed=0):
  """Writes ~500x375 JPEG crops of scikit-image's photos into class folders."""
  import PIL.Image  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top

  photos = []
  for name in PHOTOS:
    image = getattr(skimage.data, name)()
    photos.append(image[0] if isinstance(image, tuple) else image)
  rng = np.random.default_rng(seed)
  sizes = []
  for i in range(num_images):
    photo = photos[i % len(photos)]
    h, w = photo.shape[:2]
    portrait = rng.random() < 0.25  # ImageNet is mostly landscape
    aspect = 3 / 4 if portrait else 4 / 3  # width / height
    ch = int(min(h, w / aspect) * rng.uniform(0.6, 1.0))
    cw = int(ch * aspect)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = PIL.Image.fromarray(photo[y : y + ch, x : x + cw])
    crop = crop.resize(
        (375, 500) if portrait else (500, 375), PIL.Image.BICUBIC
    )
    if rng.random() < 0.5:
      crop = crop.transpose(PIL.Image.FLIP_LEFT_RIGHT)
    folder = os.path.join(root, f'class_{i % num_classes:02d}')
    os.makedirs(folder, exist_ok=True)
    buf = io.BytesIO()
    crop.save(buf, format='JPEG', quality=95)
    with open(os.path.join(folder, f'{i:05d}.jpg'), 'wb') as f:
      f.write(buf.getvalue())
    sizes.append(len(buf.getvalue()))
  return float(np.mean(sizes))


def unpack_tarball(tarball, unpack_root='') -> str:
  """Extracts a .tar.gz of image folders once; returns the folder.

  Python's tarfile with filter='data' (no links out, no devices, no
  absolute paths), into <unpack_root>/<name>-<key>, the key a hash of the
  tarball's resolved path, size and mtime; a '.complete' marker written last
  makes a second call (another process, a later suite item) return at once.
  An interrupted extraction has no marker and is redone.

  Args:
    tarball: path of the .tar.gz / .tgz.
    unpack_root: parent folder ('' for <tempdir>/byol_jax_unpacked).

  Returns:
    The folder holding train/ (the extracted tree's single top folder when
    the archive has one around train/).
  """
  path = pathlib.Path(tarball).resolve()
  stat = path.stat()
  key = hashlib.sha1(
      f'{path}:{stat.st_size}:{stat.st_mtime_ns}'.encode()
  ).hexdigest()[:10]
  name = path.name.removesuffix('.gz').removesuffix('.tgz').removesuffix('.tar')
  root = pathlib.Path(
      unpack_root or os.path.join(tempfile.gettempdir(), 'byol_jax_unpacked')
  )
  dest = root / f'{name}-{key}'
  if not (dest / '.complete').exists():
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path) as tar:
      tar.extractall(dest, filter='data')
    (dest / '.complete').write_text(f'{path}\n')
  if not (dest / 'train').is_dir():
    inner = [d for d in dest.iterdir() if d.is_dir()]
    if len(inner) == 1 and (inner[0] / 'train').is_dir():
      return str(inner[0])
  return str(dest)


def cifar_folder(cifar, unpack_root='') -> str:
  """--cifar's CIFAR-10 JPEG folder, or '' (no CIFAR-10 rows, with a line).

  Args:
    cifar: a folder (train/<class>/*.jpg, test/...), its .tar.gz, 'none',
      or '' for ../shared/data/cifar10-jpg (its unpack.sh) when present.
    unpack_root: where a .tar.gz is extracted (unpack_tarball).

  Returns:
    The folder's path, or '' when there is no CIFAR-10.

  Raises:
    FileNotFoundError: --cifar names a path that does not exist.
  """
  if cifar == NO_CIFAR:
    print('skipping CIFAR-10: --cifar=none', file=sys.stderr)
    return ''
  if not cifar:
    if not CIFAR_TARBALL.exists():
      print(f'skipping CIFAR-10: {CIFAR_TARBALL} not found', file=sys.stderr)
      return ''
    out = subprocess.run(
        [
            'bash',
            str(CIFAR_TARBALL.parent / 'unpack.sh'),
            '/tmp/byol_jax_cifar10-jpg',
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]
  path = pathlib.Path(cifar)
  if not path.exists():
    raise FileNotFoundError(f'--cifar={cifar}: no such file or folder')
  if path.is_dir():
    return str(path.resolve())
  return unpack_tarball(path, unpack_root)


def time_iterator(iterator, images_per_batch, batches, warmup=3):
  """Returns (images per wall second, images per CPU second of the process).

  CPU seconds count every thread of this process (tf.data's pools, the
  consumer), so the second number is images/s per fully used core whatever
  the thread settings or other load on the machine.
  """
  for _ in range(warmup):
    next(iterator)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(iterator)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  images = images_per_batch * batches
  return images / wall, images / cpu


def time_in_memory(source, image_size, batch, batches, devices, warmup=3):
  """Crop (+ BYOL augmentation) rates of the in-memory path on `devices`.

  Returns:
    dict: images_per_sec (crops and both views' colour augmentation, the
    training step excluded), crop_only_images_per_sec, compile_s.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from byol_jax import augment as augment_lib  # pylint: disable=g-import-not-at-top
  from byol_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from byol_jax.hosts import parallel  # pylint: disable=g-import-not-at-top

  it = pipeline.make_pretrain_iterator(
      source,
      split='train',
      global_batch_size=batch,
      image_size=image_size,
      seed=0,
      process_index=0,
      process_count=1,
      local_device_count=len(devices),
  )

  def augment(views):
    n = views['view1'].shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(
        jnp.arange(n)
    )
    return (
        augment_lib.augment_examples(keys, views['view1'], 1),
        augment_lib.augment_examples(keys, views['view2'], 2),
    )

  augmented = parallel.device_program(augment, axis_name=None, devices=devices)
  start = time.perf_counter()
  jax.block_until_ready(augmented(next(it)))  # compiles both
  compile_s = time.perf_counter() - start
  rates = {}
  for name, fn in (('crop_only', lambda b: b), ('crop_augment', augmented)):
    for _ in range(warmup):
      jax.block_until_ready(fn(next(it)))
    start = time.perf_counter()
    for _ in range(batches):  # dispatched asynchronously, as in training
      out = fn(next(it))
    jax.block_until_ready(out)
    rates[name] = batch * batches / (time.perf_counter() - start)
  return dict(
      images_per_sec=round(rates['crop_augment'], 1),
      crop_only_images_per_sec=round(rates['crop_only'], 1),
      compile_s=round(compile_s, 2),
  )


def define_flags(flag_values) -> None:
  """Defines the command line's flags on flag_values (see _cli)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_integer('batches', 20, 'timed batches per row', **fv)
  flags.DEFINE_integer('batch', 64, 'host batch of the streaming path', **fv)
  flags.DEFINE_integer(
      'in_memory_batch', 512, 'batch of the in-memory path at 32 px', **fv
  )
  flags.DEFINE_integer(
      'in_memory_batch_224', 64, 'batch of the in-memory path at 224 px', **fv
  )
  flags.DEFINE_integer(
      'in_memory_devices', 1, 'devices of the in-memory path', **fv
  )
  flags.DEFINE_string(
      'cifar',
      '',
      'CIFAR-10 JPEG folders (train/<class>/'
      "*.jpg, test/...) or their .tar.gz; '': "
      f'{CIFAR_TARBALL} when present; {NO_CIFAR!r}: none',
      **fv,
  )
  flags.DEFINE_string(
      'unpack_dir',
      '',
      'where a --cifar .tar.gz is '
      "extracted once ('': <tempdir>/byol_jax_unpacked)",
      **fv,
  )
  flags.DEFINE_string(
      'cache_dir', '', "decoded-folder cache ('': the default)", **fv
  )
  flags.DEFINE_bool('skip_streaming', False, 'leave out the tf.data rows', **fv)
  flags.DEFINE_bool('no_write', False, 'write no results file', **fv)
  flags.DEFINE_string(
      'out',
      str(REPO / 'benchmarks' / 'results'),
      'folder of the results file',
      **fv,
  )


def main(argv=None):
  """Times every row; writes the results file unless --no_write.

  Args:
    argv: command-line arguments (default sys.argv[1:]).

  Returns:
    The result dict.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  return run(
      _cli.parse(define_flags, argv, program='benchmarks.input_pipeline'), argv
  )


def run(args, argv):
  """main's body: args the parsed flags, argv the command line behind them."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import jax  # pylint: disable=g-import-not-at-top

  from byol_jax.data import sources  # pylint: disable=g-import-not-at-top

  cores = _results.cpu_cores()
  start = time.perf_counter()
  cifar_dir = cifar_folder(args.cifar, args.unpack_dir)
  unpack_s = time.perf_counter() - start

  devices = jax.local_devices()[: args.in_memory_devices]
  first = devices[0]
  in_memory = []
  datasets = [('synthetic_224', 'synthetic:224', 224, args.in_memory_batch_224)]
  if cifar_dir:
    datasets.insert(
        0, ('cifar10_jpg', f'folder:{cifar_dir}', 32, args.in_memory_batch)
    )
  for name, spec, size, batch in datasets:
    source = sources.get_source(spec, validate_files=False)
    row = dict(
        name=f'{name}/in_memory_crop_augment',
        dataset='folder:cifar10_jpg'
        if cifar_dir and spec.endswith(cifar_dir)
        else spec,
        image_size=size,
        batch=batch,
        device=f'{first.platform}: {first.device_kind}',
        num_devices=len(devices),
    )
    if (
        name == 'cifar10_jpg'
        and args.cifar not in ('', NO_CIFAR)
        and (not pathlib.Path(args.cifar).is_dir())
    ):
      row['unpack_s'] = round(unpack_s, 2)
    if isinstance(source, sources.FolderSource):
      start = time.perf_counter()
      source = sources.in_memory_folder(source, cache_dir=args.cache_dir)
      row['decode_or_cache_read_s'] = round(time.perf_counter() - start, 2)
      start = time.perf_counter()
      source = sources.in_memory_folder(
          sources.get_source(spec, validate_files=False),
          cache_dir=args.cache_dir,
      )
      row['cache_read_s'] = round(time.perf_counter() - start, 2)
    row.update(time_in_memory(source, size, batch, args.batches, devices))
    in_memory.append(row)
    print(row, flush=True)

  streaming = []
  # TensorFlow imported only for the streaming rows (seconds of start-up).
  tf_missing = '' if args.skip_streaming else _tensorflow_missing()
  if args.skip_streaming or tf_missing:
    if tf_missing:
      print(f'skipping the streaming path: {tf_missing}', file=sys.stderr)
  else:
    streaming, mean_bytes = _streaming(args, cifar_dir, cores)
  result = dict(
      device=f'{first.platform}: {first.device_kind}',
      host_cpu=f'{_results.cpu_name()}',
      cores=cores,
      date=_results.today(),
      command='python -m benchmarks.input_pipeline ' + ' '.join(argv),
      load_average_1min_after=round(os.getloadavg()[0], 2),
      batches_timed=args.batches,
      in_memory=in_memory,
      streaming_host_batch=args.batch,
      streaming=streaming,
  )
  if streaming and mean_bytes:
    result['imagenet_sized_mean_jpeg_bytes'] = round(mean_bytes)
  print(
      f'\n{"in memory (on device)":40s} {"size":>4s} {"batch":>6s} '
      f'{"img/s":>10s} {"crop-only":>10s}'
  )
  for c in in_memory:
    print(
        f'{c["name"]:40s} {c["image_size"]:4d} {c["batch"]:6d} '
        f'{c["images_per_sec"]:10.1f} {c["crop_only_images_per_sec"]:10.1f}'
    )
  if streaming:
    print(
        f'\n{"streaming (tf.data, host)":40s} {"size":>4s} {"threads":>7s} '
        f'{"img/s":>9s} {"img/s/core":>10s}'
    )
  for c in streaming:
    print(
        f'{c["name"]:40s} {c["image_size"]:4d} {c["threads"]:7d} '
        f'{c["images_per_sec"]:9.1f} {c["images_per_sec_per_core"]:10.1f}'
    )
  if not args.no_write:
    path = _results.write_json(
        _results.results_path(
            'input_pipeline',
            _results.device_slug(
                first.platform, first.device_kind, len(devices)
            ),
            result['date'],
            args.out,
        ),
        result,
    )
    print(f'wrote {path}')
  return result


def _tensorflow_missing() -> str:
  """'' when TensorFlow imports, else why not."""
  try:
    import tensorflow  # noqa: F401  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return f'TensorFlow is not importable ({e})'
  return ''


def _streaming(args, cifar_dir, cores):
  """The tf.data rows (and the ImageNet-sized JPEGs' mean size)."""
  from byol_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from byol_jax.data import sources  # pylint: disable=g-import-not-at-top

  thread_counts = sorted({1, cores})
  configs = []
  tmp = tempfile.mkdtemp(prefix='byol_jax_bench_')
  imagenet_dir = os.path.join(tmp, 'imagenet_sized')
  datasets, mean_bytes = [], None
  try:
    mean_bytes = make_imagenet_sized(imagenet_dir)
    datasets.append(('imagenet_sized', f'folder:{imagenet_dir}', 224))
  except ImportError as e:  # scikit-image ships the photos
    print(f'skipping the ImageNet-sized JPEGs: {e}', file=sys.stderr)
  if cifar_dir:
    datasets.insert(0, ('cifar10_jpg', f'folder:{cifar_dir}', 32))
  common = dict(
      global_batch_size=args.batch,
      process_index=0,
      process_count=1,
      local_device_count=1,
  )
  for name, spec, size in datasets:
    source = sources.get_source(spec)  # a FolderSource: streams
    kinds = [
        (
            'pretrain_2views',
            lambda s, t, sz=size: pipeline.make_pretrain_iterator(
                s, split='train', image_size=sz, seed=0, num_threads=t, **common
            ),
        )
    ]
    if name == 'imagenet_sized':
      kinds.append(
          (
              'eval_center_crop',
              lambda s, t, sz=size: _cycle(
                  lambda: pipeline.make_eval_iterator(
                      s, split='train', image_size=sz, num_threads=t, **common
                  )
              ),
          )
      )
    for kind, make in kinds:
      for threads in thread_counts:
        rate, per_cpu = time_iterator(
            make(source, threads), args.batch, args.batches
        )
        configs.append(
            dict(
                name=f'{name}/{kind}',
                dataset=spec.split(':')[0] + ':' + name,
                image_size=size,
                threads=threads,
                images_per_sec=round(rate, 1),
                images_per_sec_per_core=round(per_cpu, 1),
            )
        )
        print(configs[-1], flush=True)
  shutil.rmtree(tmp, ignore_errors=True)
  return configs, mean_bytes


def _cycle(make):
  while True:
    yield from make()


if __name__ == '__main__':
  _cli.main_run(define_flags, run)
