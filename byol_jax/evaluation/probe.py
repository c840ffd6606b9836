"""The linear probe, BYOL App. C.1 (kept by Richemond et al. 2020, §3).

The rate sweep's probes run vmapped on centre-crop features even with
eval.augment: our simplification (the official code runs one augmented probe per
rate), written as eval_results.json's 'sweep_on'.
"""

import functools
import itertools

from absl import logging
import haiku as hk
import jax
import numpy as np
import optax

from byol_jax import encoder as encoder_lib
from byol_jax import losses
from byol_jax.data import pipeline
from byol_jax.data import sources
from byol_jax.evaluation import features
from byol_jax.hosts import parallel
from byol_jax.hosts import sync
from byol_jax.models import heads


def classifier(num_classes: int) -> hk.Transformed:
  """The probe: a zero-initialised LinearClassifier on features [N, D]."""
  probe = lambda x: heads.LinearClassifier(num_classes, zero_init=True)(x)
  return hk.without_apply_rng(hk.transform(probe))


def make_loss(config, num_classes: int, *, encode: bool):
  """loss(clf, enc_params, enc_state, images|features, labels) -> CE, logits."""
  clf = classifier(num_classes)
  enc = encoder_lib.encoder_apply(config) if encode else lambda p, s, x: x

  def loss(clf_params, enc_params, enc_state, inputs, labels):
    # Frozen encoder (BYOL App. C.1): nothing flows back into it.
    feats = jax.lax.stop_gradient(enc(enc_params, enc_state, inputs))
    logits = clf.apply(clf_params, feats)
    return losses.softmax_cross_entropy(logits, labels), logits

  return loss


def _probe_optimizer(peak, steps: int, momentum: float):
  """SGD + Nesterov momentum, lr peak x cosine to 0 over `steps` (official)."""
  lr = optax.cosine_decay_schedule(peak, steps)
  return optax.sgd(lr, momentum=momentum, nesterov=True)


def _init_probe(num_classes: int, dim: int):
  return classifier(num_classes).init(
      jax.random.PRNGKey(0), np.zeros((1, dim), np.float32)
  )


@functools.lru_cache(maxsize=8)
def _probes_step(num_classes: int, steps: int, momentum: float):
  """jit(step) training K probes at K peak rates on one batch (vmapped)."""
  loss = make_loss(None, num_classes, encode=False)

  def one(params, opt_state, peak, feats, labels):
    grads, _ = jax.grad(loss, has_aux=True)(params, None, None, feats, labels)
    updates, opt_state = _probe_optimizer(peak, steps, momentum).update(
        grads, opt_state, params
    )
    return optax.apply_updates(params, updates), opt_state

  return jax.jit(
      jax.vmap(one, in_axes=(0, 0, 0, None, None)), donate_argnums=(0, 1)
  )


def train_probes(
    feats, labels, peaks, *, num_classes, steps, batch_size, momentum, seed
):
  """Params [K, ...] of K probes, one per peak rate, on features [N, D]."""
  # One device (every host the same), the same batches, each epoch permuted.
  init = _init_probe(num_classes, feats.shape[-1])
  params = jax.tree.map(lambda x: np.repeat(x[None], len(peaks), 0), init)
  opt_state = jax.vmap(_probe_optimizer(1.0, steps, momentum).init)(params)
  step = _probes_step(num_classes, steps, momentum)
  peaks = np.asarray(peaks, np.float32)
  for i in range(steps):
    idx = pipeline.stream_indices(
        i * batch_size + np.arange(batch_size), len(labels), (seed,)
    )
    params, opt_state = step(params, opt_state, peaks, feats[idx], labels[idx])
  return jax.device_get(params)


def _fit(config, plan, train, peaks, steps: int):
  """train_probes on (features, labels) with the run's batch, momentum, seed."""
  return train_probes(
      *train,
      peaks,
      num_classes=plan.num_classes,
      steps=steps,
      batch_size=config.eval.global_batch_size,
      momentum=config.eval.momentum,
      seed=config.seed,
  )


def sweep_learning_rate(config, plan, source, train, valid=None):
  """(chosen rate's index, {rate: top-1}) on valid or (None) a part of train."""
  rates = config.eval.learning_rates
  if valid is None:
    n = len(train[1])
    held = np.arange(plan.sweep_valid_examples)  # TFDS: train[:N], as ImageNet
    if not isinstance(source, sources.TfdsSource):
      held = features.subset_indices(n, plan.sweep_valid_examples)
    rest = np.setdiff1d(np.arange(n), held)
    valid, train = [x[held] for x in train], [x[rest] for x in train]
  probes = _fit(config, plan, train, plan.peak_learning_rates, plan.sweep_steps)
  clf = classifier(plan.num_classes)
  logits = jax.vmap(clf.apply, (0, None))(probes, valid[0])
  top1 = np.asarray(losses.topk_correct(logits, valid[1], 1).mean(-1))
  chosen = int(np.argmax(top1))  # ties: the first (largest) rate in the grid
  table = {str(rate): float(t) for rate, t in zip(rates, top1)}
  logging.info(
      f'Probe base rate {rates[chosen]} chosen on {len(valid[1])} held-out '
      f'examples (top-1s: {table})'
  )
  return chosen, table


def train_final_probe(
    config, plan, source, params, state, train, peak, devices=None
):
  """The probe at `peak` on all of train: crops (eval.augment) or features."""
  e, steps = config.eval, plan.steps
  if not e.augment:
    probes = _fit(config, plan, train, [peak], steps)
    return jax.tree.map(lambda x: x[0], probes)
  local = list(devices or jax.local_devices())
  optimizer = _probe_optimizer(peak, steps, e.momentum)
  loss_fn = make_loss(config, plan.num_classes, encode=True)

  def step(clf_params, opt_state, enc_params, enc_state, batch):
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        clf_params, enc_params, enc_state, batch['image'], batch['label']
    )
    top1 = losses.topk_correct(logits, batch['label'], 1).mean()
    # The mean over the global batch, as the official psum of loss / devices.
    grads, metrics = jax.lax.pmean(
        (grads, {'loss': loss, 'top1': top1}), parallel.AXIS_NAME
    )
    updates, opt_state = optimizer.update(grads, opt_state, clf_params)
    return optax.apply_updates(clf_params, updates), opt_state, metrics

  fn = parallel.device_program(step, devices=devices, donate_argnums=(0, 1))
  clf_params = _init_probe(plan.num_classes, train[0].shape[-1])
  rclf, ropt, renc = parallel.replicate(
      (clf_params, optimizer.init(clf_params), (params, state)), local
  )
  it = pipeline.make_supervised_iterator(
      source,
      split=e.train_split,
      global_batch_size=e.global_batch_size,
      image_size=config.data.image_size,
      seed=config.seed,
      local_device_count=len(local),
      min_crop_area=config.data.get('min_crop_area', 0.08),
      in_memory_on=config.data.get('in_memory_on', 'device'),
  )
  batches = pipeline.prefetch_to_device(it, devices=local)
  first = next(batches)
  sync.compile_then_sync(fn, rclf, ropt, *renc, first, name='the probe')
  log_every = max(1, steps // 10)
  for i, batch in zip(range(steps), itertools.chain([first], batches)):
    rclf, ropt, m = fn(rclf, ropt, *renc, batch)
    if (i + 1) % log_every == 0 or i + 1 == steps:
      m = jax.device_get(parallel.unreplicate(m))
      logging.info(
          f'linear eval step {i + 1}/{steps}: loss {m["loss"]:.4f}, batch '
          f'top-1 {m["top1"]:.3f}'
      )
  return jax.device_get(parallel.unreplicate(rclf))
