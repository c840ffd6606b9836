"""The in-memory path: crops, resize and flips on the devices (pipeline.py)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax.data import crops
from byol_jax.data import pipeline
from byol_jax.data import sources

ONE_HOST = dict(process_index=0, process_count=1)


def _ids_source(n=40, side=10):
  """uint8 images whose pixels encode the example's index (label = index)."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
  images[:, :, :, 0] = (np.arange(n) * 6)[:, None, None]
  return sources.InMemorySource(
      'ids', n, {'train': images}, {'train': np.arange(n, dtype=np.int32)}
  )


def _host(batch):
  return {k: np.asarray(v) for k, v in batch.items()}


def test_resize_equals_tensorflows_bicubic_of_the_crop():
  """The streaming path's resize (tf.image.resize, bicubic, then clip)."""
  tf = pytest.importorskip('tensorflow')
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 40, 48, 3), dtype=np.uint8)
  for size in (16, 64):  # down- and up-sampling
    box = crops.sample_crop(np, rng.random((6, crops.NUM_U)), 40, 48)
    ours = np.asarray(pipeline.crop_resize(jnp.asarray(images), box, size))
    for i in range(6):
      y0, x0, h, w = (int(b[i]) for b in box)
      crop = images[i, y0 : y0 + h, x0 : x0 + w].astype(np.float32)
      ref = np.clip(
          tf.image.resize(crop, [size, size], method='bicubic').numpy() / 255.0,
          0.0,
          1.0,
      )
      # Measured: 3e-7 (float32 rounding) with tensorflow-cpu 2.21.
      np.testing.assert_allclose(ours[i], ref, atol=1e-5)


def test_resize_identity_flip_and_weights():
  images = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), np.uint8)
  whole = (0, 0, 8, 8)
  out = np.asarray(pipeline.crop_resize(jnp.asarray(images), whole, 8))
  np.testing.assert_allclose(out, images / 255.0, atol=1e-6)
  flip = np.array([True, False, True])
  flipped = np.asarray(
      pipeline.crop_resize(jnp.asarray(images), whole, 8, jnp.asarray(flip))
  )
  np.testing.assert_allclose(flipped[flip], out[flip][:, :, ::-1], atol=1e-6)
  np.testing.assert_array_equal(flipped[~flip], out[~flip])
  w = np.asarray(
      pipeline.resize_weights(np.array([3, 0]), np.array([5, 1]), 7, 12)
  )
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
  assert (w[0][:, :3] == 0).all() and (w[0][:, 8:] == 0).all()  # in the box
  assert ((w[0] != 0).sum(-1) <= 4).all()
  np.testing.assert_array_equal(w[1][:, 0], 1.0)  # a 1-pixel span


def _batches(
    src,
    steps,
    *,
    devices,
    start=0,
    on='device',
    hosts=1,
    host=0,
    seed=3,
    views=2
):
  make = (
      pipeline.make_pretrain_iterator
      if views == 2
      else pipeline.make_supervised_iterator
  )
  it = make(
      src,
      split='train',
      global_batch_size=16,
      image_size=6,
      seed=seed,
      start_step=start,
      local_device_count=devices,
      process_index=host,
      process_count=hosts,
      in_memory_on=on,
  )
  return [_host(next(it)) for _ in range(steps)]


def _flat(batch):
  return {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}


def test_batches_do_not_depend_on_devices_hosts_or_placement():
  src = _ids_source()
  one = [_flat(b) for b in _batches(src, 4, devices=1)]  # 2.5 epochs of 16
  for kwargs in (dict(devices=8), dict(devices=4, on='host')):
    other = [_flat(b) for b in _batches(src, 4, **kwargs)]
    for a, b in zip(one, other):
      for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)
  # Two hosts x 4 devices: host 0's batch, then host 1's, is the batch.
  halves = [_batches(src, 4, devices=4, hosts=2, host=h) for h in (0, 1)]
  for a, h0, h1 in zip(one, *halves):
    for key in a:
      np.testing.assert_allclose(
          a[key], np.concatenate([_flat(h0)[key], _flat(h1)[key]]), atol=1e-6
      )
  # Each epoch (40 examples, 2.5 batches) is a permutation of the split.
  labels = np.concatenate([b['label'] for b in one])
  assert sorted(labels[:40]) == list(range(40))
  # The crops follow their example: the red channel encodes the index.
  red = np.round(one[0]['view1'][..., 0].mean((1, 2)) * 255 / 6)
  np.testing.assert_array_equal(red, one[0]['label'])


def test_resume_at_any_step_is_exact():
  src = _ids_source()
  full = _batches(src, 6, devices=2)
  for start in (1, 4):  # inside epoch 0; across the epoch 1 / 2 boundary
    resumed = _batches(src, 6 - start, devices=2, start=start)
    for want, got in zip(full[start:], resumed):
      for key in want:
        np.testing.assert_array_equal(got[key], want[key])
  other = _batches(src, 1, devices=2, seed=4)[0]
  assert not np.array_equal(other['view1'], full[0]['view1'])


def test_crop_areas_and_flips_follow_the_specification():
  """A ramp image: each crop's span and direction are visible in it."""
  n, side = 512, 64
  ramp = np.broadcast_to(
      np.linspace(0, 1, side)[None, None, :, None], (n, side, side, 3)
  ).astype(np.float32)
  src = sources.InMemorySource(
      'ramp', 2, {'train': ramp}, {'train': np.zeros(n, np.int32)}
  )
  image = np.asarray(
      next(
          pipeline.make_supervised_iterator(
              src,
              split='train',
              global_batch_size=n,
              image_size=16,
              seed=0,
              local_device_count=1,
              **ONE_HOST
          )
      )['image'][0]
  )
  flipped = image[:, 8, 0, 0] > image[:, 8, -1, 0]
  # Binomial sd 0.022; 10 seeds (AMD EPYC): 0.493 +- 0.036 (seed 0: 0.441):
  # 0.1 is 4.5 binomial sd; never flipped: 0, always: 1.
  assert abs(flipped.mean() - 0.5) < 0.1
  # Width fraction of each crop, from the ramp's range (the taps at the
  # span's ends reach half a pixel further in). 10 seeds (AMD EPYC): min
  # 0.252 +- 0.009 (12 sd), max 0.952 every seed.
  span = np.abs(image[:, 8, -1, 0] - image[:, 8, 0, 0])
  assert span.min() > 0.15 and span.max() > 0.9
  # Pre-training views are not flipped here (augment.py flips them).
  views = next(
      pipeline.make_pretrain_iterator(
          src,
          split='train',
          global_batch_size=n,
          image_size=16,
          seed=0,
          local_device_count=1,
          **ONE_HOST
      )
  )
  v = np.asarray(views['view1'][0])
  assert (v[:, 8, 0, 0] <= v[:, 8, -1, 0]).all()


def test_device_sampler_is_the_official_one():
  """sample_crop on device (float32) cuts numpy's (float64) boxes."""
  u = np.random.default_rng(0).random((4000, crops.NUM_U)).astype(np.float32)
  host = crops.sample_crop(np, u.astype(np.float64), 375, 500)
  device = jax.jit(lambda u: crops.sample_crop(jnp, u, 375.0, 500.0))(u)
  same = np.all([np.asarray(d) == h for d, h in zip(device, host)], axis=0)
  # float32 vs float64 rounding at .5 only: 1.0 in 10 seeds (AMD EPYC).
  assert same.mean() > 0.995
  y0, x0, h, w = (np.asarray(x) for x in device)
  assert (y0 >= 0).all() and (y0 + h <= 375).all() and (x0 + w <= 500).all()


def test_eval_is_the_centre_crop_padded_and_placement_logged(caplog):
  src = sources.get_source('synthetic:16')
  caplog.set_level(logging.INFO)
  batches = [
      _host(b)
      for b in pipeline.make_eval_iterator(
          src,
          split='test',
          global_batch_size=96,
          image_size=8,
          local_device_count=4,
          **ONE_HOST
      )
  ]
  assert "In-memory data synthetic:16 split 'test': 256 images 16x16x3 " in (
      caplog.text
  )
  assert 'uint8, 0.2 MiB on each of 4 device(s) (cpu)' in caplog.text
  assert len(batches) == 3
  mask = np.concatenate([b['mask'].ravel() for b in batches])
  assert mask.sum() == 256 and mask[:256].all()
  image = np.concatenate([_flat(b)['image'] for b in batches])
  np.testing.assert_array_equal(image[256:], 0.0)
  # Centre 14 (16 x 224/256) of 16 pixels, resized to 8.
  ref = pipeline.crop_resize(
      jnp.asarray(src.images['test'][:8]), (1, 1, 14, 14), 8
  )
  np.testing.assert_allclose(image[:8], ref, atol=1e-6)


def test_a_training_step_on_8_devices_equals_1_device(jit_o0):
  """The in-memory batch and the update (GN+WS tiny) on 8 devices and on 1."""
  from byol_jax import experiment  # pylint: disable=g-import-not-at-top
  from byol_jax import experiment as ts  # pylint: disable=g-import-not-at-top
  from byol_jax.config import configs  # pylint: disable=g-import-not-at-top
  from byol_jax.config import plan  # pylint: disable=g-import-not-at-top
  from byol_jax.config import presets  # pylint: disable=g-import-not-at-top
  from byol_jax.hosts import parallel  # pylint: disable=g-import-not-at-top

  assert jax.local_device_count() == 8
  inputs = configs.experiment_config(
      'tiny,batch=16,steps=4', model=presets.GN_WS_MODEL
  )
  inputs.training.warmup_steps = 0
  run = plan.build(inputs, topology=plan.Topology(1, 8))
  config = run.config
  method, optimizer, update = experiment.make_update(config, run.pretrain)
  # conftest's jit_o0: the equality holds for any initial state.
  state = jit_o0(
      lambda: ts.init_train_state(
          method,
          optimizer,
          jax.random.PRNGKey(0),
          experiment.sample_images(config),
      )
  )
  results = []
  for n in (8, 1):
    devices = jax.local_devices()[:n]
    batch = next(
        pipeline.make_pretrain_iterator(
            run.source,
            split='pretrain',
            global_batch_size=16,
            image_size=config.data.image_size,
            seed=0,
            start_step=5,
            local_device_count=n,
            min_crop_area=config.data.min_crop_area,
            **ONE_HOST
        )
    )
    step = ts.pmap_update(update, devices=devices)
    # jit_o0: 8 devices = 1 at any optimisation level.
    new, metrics = jit_o0(step, parallel.replicate(state, devices), batch)
    results.append(
        (
            _flat(_host(batch)),
            parallel.unreplicate(new),
            parallel.unreplicate(metrics),
        )
    )
  (b8, s8, m8), (b1, s1, m1) = results
  for key in b8:
    np.testing.assert_allclose(b8[key], b1[key], atol=1e-6)
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
  for a, b in zip(
      jax.tree.leaves((s8.online_params, s8.target_params)),
      jax.tree.leaves((s1.online_params, s1.target_params)),
  ):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  moved = max(
      float(np.abs(np.asarray(a) - b).max())
      for a, b in zip(
          jax.tree.leaves(s1.online_params),
          jax.tree.leaves(state.online_params),
      )
  )
  assert moved > 1e-4  # the step changed the weights
