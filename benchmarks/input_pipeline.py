r"""Host input-pipeline throughput: images/s and images/s per CPU core.

Measures the host part only (read, decode, random-resized crop, resize,
batch) of `byol_jax.data.pipeline` on real JPEG folders:

  * CIFAR-10 as JPEG folders (../shared/data/cifar10-jpg, unpacked to /tmp),
    32px, two views per image (BYOL pre-training);
  * ImageNet-sized JPEGs: a few hundred ~500x375 crops of the real photos that
    scikit-image ships, quality 95, in 10 class folders (made in a temp dir),
    224px, two views (pre-training) and one centre crop (eval);
  * the numpy path (no TensorFlow) on the bundled digits and on synthetic
    224px images.

A pre-training "image" yields two views (two crop-decodes and two resizes).
`threads` is tf.data's private pool size. images_per_sec is wall-clock;
images_per_sec_per_core is images per CPU-second of the whole process
(time.process_time: all its threads), i.e. the rate one fully used core gives;
it is robust to other load on a shared machine, wall-clock numbers are not.

    python -m benchmarks.input_pipeline            # writes benchmarks/results/
    python -m benchmarks.input_pipeline --batches 5 --no-write   # smoke run
"""
import argparse
import io
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import _results

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR_TARBALL = (REPO.parent / 'shared' / 'data' / 'cifar10-jpg' /
                 'cifar10-jpg.tar.gz')
PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'retina',
          'hubble_deep_field', 'immunohistochemistry', 'stereo_motorcycle')


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
    crop = PIL.Image.fromarray(photo[y:y + ch, x:x + cw])
    crop = crop.resize((375, 500) if portrait else (500, 375),
                       PIL.Image.BICUBIC)
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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batches', type=int, default=20)
  parser.add_argument('--batch', type=int, default=64, help='host batch')
  parser.add_argument('--no-write', action='store_true')
  parser.add_argument('--out', default=str(REPO / 'benchmarks' / 'results'))
  args = parser.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from byol_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from byol_jax.data import sources  # pylint: disable=g-import-not-at-top

  cores = _results.cpu_cores()
  thread_counts = sorted({1, cores})
  configs = []
  tmp = tempfile.mkdtemp(prefix='byol_jax_bench_')
  imagenet_dir = os.path.join(tmp, 'imagenet_sized')
  mean_bytes = make_imagenet_sized(imagenet_dir)
  datasets = [('imagenet_sized', f'folder:{imagenet_dir}', 224)]
  if CIFAR_TARBALL.exists():
    out = subprocess.run(['bash', str(CIFAR_TARBALL.parent / 'unpack.sh'),
                          '/tmp/byol_jax_cifar10-jpg'], check=True,
                         capture_output=True, text=True)
    cifar_dir = out.stdout.strip().splitlines()[-1]
    datasets.insert(0, ('cifar10_jpg', f'folder:{cifar_dir}', 32))
  else:
    print(f'skipping CIFAR-10: {CIFAR_TARBALL} not found', file=sys.stderr)

  common = dict(global_batch_size=args.batch, process_index=0,
                process_count=1, local_device_count=1)
  for name, spec, size in datasets:
    source = sources.get_source(spec)
    kinds = [('pretrain_2views', lambda s, t, sz=size: pipeline
              .make_pretrain_iterator(s, split='train', image_size=sz, seed=0,
                                      num_threads=t, **common))]
    if name == 'imagenet_sized':
      kinds.append(('eval_center_crop', lambda s, t, sz=size: _cycle(
          lambda: pipeline.make_eval_iterator(
              s, split='train', image_size=sz, num_threads=t, **common))))
    for kind, make in kinds:
      for threads in thread_counts:
        rate, per_cpu = time_iterator(make(source, threads), args.batch,
                                      args.batches)
        configs.append(dict(
            name=f'{name}/{kind}', dataset=spec.split(':')[0] + ':' + name,
            image_size=size, threads=threads, images_per_sec=round(rate, 1),
            images_per_sec_per_core=round(per_cpu, 1)))
        print(configs[-1], flush=True)

  shutil.rmtree(tmp, ignore_errors=True)
  for spec, size in (('digits', 32), ('synthetic:224', 224)):
    it = pipeline.make_pretrain_iterator(sources.get_source(spec),
                                         split='train', image_size=size,
                                         seed=0, **common)
    rate, per_cpu = time_iterator(it, args.batch, args.batches)
    configs.append(dict(name=f'{spec}/pretrain_2views_numpy', dataset=spec,
                        image_size=size, threads=pipeline.numpy_threads(),
                        images_per_sec=round(rate, 1),
                        images_per_sec_per_core=round(per_cpu, 1)))
    print(configs[-1], flush=True)

  result = dict(
      device=f'cpu: {_results.cpu_name()}', cores=cores,
      date=_results.today(),
      command='python -m benchmarks.input_pipeline ' + ' '.join(
          argv if argv is not None else sys.argv[1:]),
      load_average_1min_after=round(os.getloadavg()[0], 2),
      host_batch=args.batch, batches_timed=args.batches,
      imagenet_sized_mean_jpeg_bytes=round(mean_bytes),
      configs=configs)
  print(f'\n{"config":40s} {"size":>4s} {"threads":>7s} {"img/s":>9s} '
        f'{"img/s/core":>10s}')
  for c in configs:
    print(f'{c["name"]:40s} {c["image_size"]:4d} {c["threads"]:7d} '
          f'{c["images_per_sec"]:9.1f} {c["images_per_sec_per_core"]:10.1f}')
  if not args.no_write:
    path = _results.write_json(_results.results_path(
        'input_pipeline', f'{_results.slug(_results.cpu_name())}-{cores}cores',
        result['date'], args.out), result)
    print(f'wrote {path}')
  return result


def _cycle(make):
  while True:
    yield from make()


if __name__ == '__main__':
  main()
