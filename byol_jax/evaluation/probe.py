"""The linear probe (the paper's protocol) and its learning-rate sweep.

Protocol (BYOL Appendix C.1, used unchanged by Richemond et al. 2020, §3):
the encoder is frozen and run in inference mode; a linear classifier on its
representation is trained with SGD + Nesterov momentum 0.9, no weight decay,
a cosine-decayed learning rate, batch 1024 for 80 epochs, on random-resized
crops with horizontal flips (`eval.augment=True`); top-1 / top-5 are
measured on centre crops. With `eval.augment=False` the probe is trained on
the centre-crop features of every training image, computed once: the same
optimisation without augmentation, orders of magnitude cheaper on CPU.

Learning rate: the protocol picks it from {0.4, 0.3, 0.2, 0.1, 0.05}
(`config.eval.learning_rates`) on a held-out part of train, then trains the
probe on all of its training split at the chosen rate. On ImageNet the rate
is selected on train[:10000] ('linear_valid') with the probes trained on
train[10000:] ('linear_train', also the final probe's data), as the official
byol/utils/dataset.py splits it; any dataset with its own validation split
does the same (plan.sweep_valid_split). As the official code
(byol/eval_experiment.py, byol/utils/schedules.py), each rate is a base rate
for batch 256, scaled to base * global_batch / 256, cosine decayed to 0, no
warm-up.

The selection (`sweep_learning_rate`) runs on frozen centre-crop features,
extracted once; the grid's probes are trained together (vmapped over the
rate, `train_probes`) on the same batches, so the sweep costs about one
probe on features. Where the protocol trains on augmented crops, the rate is
thus chosen without augmentation; that is our simplification (the official
code re-runs the augmented probe per rate), stated in eval_results.json as
'sweep_on': 'centre-crop features'. Datasets without a validation split
hold out `eval.sweep_valid_examples` training examples for the selection
instead, the first ones for TFDS sources (shuffled when prepared:
train[:N]) and a fixed random subset for folders and in-memory sources
(sorted by class).
"""

import functools
import itertools
from typing import Optional

from absl import logging
import haiku as hk
import jax
import numpy as np
import optax

from byol_jax import encoder as encoder_lib
from byol_jax import hosts
from byol_jax import losses
from byol_jax import parallel
from byol_jax.data import pipeline
from byol_jax.data import sources
from byol_jax.evaluation import features
from byol_jax.models import heads
from byol_jax.models import resnet


def classifier(num_classes: int) -> hk.Transformed:
  """The probe: a zero-initialised LinearClassifier on features [N, D]."""
  return hk.without_apply_rng(
      hk.transform(
          lambda x: heads.LinearClassifier(num_classes, zero_init=True)(x)
      )
  )


def make_loss(config, num_classes: int, *, encode: bool):
  """loss(clf_params, enc_params, enc_state, inputs, labels) -> (CE, logits).

  encode: inputs are images through the frozen encoder, else features.
  """
  clf = classifier(num_classes)
  enc = encoder_lib.encoder_apply(config) if encode else None

  def loss(clf_params, enc_params, enc_state, inputs, labels):
    feats = enc(enc_params, enc_state, inputs) if encode else inputs
    # Frozen encoder (BYOL App. C.1): nothing flows back into it.
    feats = jax.lax.stop_gradient(feats)
    logits = clf.apply(clf_params, feats)
    return losses.softmax_cross_entropy(logits, labels), logits

  return loss


def make_train_step(
    loss_fn,
    optimizer: optax.GradientTransformation,
    axis_name: Optional[str] = parallel.AXIS_NAME,
):
  """The classifier's SGD step, gradients pmean'd over axis_name.

  The pmean is the mean over the global batch, as the official psum of
  loss / num_devices. Returns (clf_params, opt_state, {'loss', 'top1'}).
  """

  def step(clf_params, opt_state, enc_params, enc_state, inputs, labels):
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        clf_params, enc_params, enc_state, inputs, labels
    )
    metrics = {
        'loss': loss,
        'top1': losses.topk_correct(logits, labels, 1).mean(),
    }
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      metrics = jax.lax.pmean(metrics, axis_name)
    updates, opt_state = optimizer.update(grads, opt_state, clf_params)
    return optax.apply_updates(clf_params, updates), opt_state, metrics

  return step


def _feature_batches(feats, labels, batch_size: int, seed: int):
  """Infinite batches of precomputed features, each epoch a permutation."""
  for step in itertools.count():
    idx = pipeline.stream_indices(
        step * batch_size + np.arange(batch_size), len(labels), (seed,)
    )
    yield feats[idx], labels[idx]


def _probe_optimizer(peak, steps: int, momentum: float):
  """SGD + Nesterov momentum, lr peak x cosine to 0 over `steps` (official)."""
  cosine = optax.cosine_decay_schedule(1.0, steps)
  return optax.sgd(
      lambda step: peak * cosine(step), momentum=momentum, nesterov=True
  )


@functools.lru_cache(maxsize=8)
def _probes_step(num_classes: int, steps: int, momentum: float):
  """jit(step) training K probes at K peak rates on one batch (vmapped)."""
  clf = classifier(num_classes)

  def one(params, opt_state, peak, feats, labels):
    def loss(p):
      return losses.softmax_cross_entropy(clf.apply(p, feats), labels)

    grads = jax.grad(loss)(params)
    updates, opt_state = _probe_optimizer(peak, steps, momentum).update(
        grads, opt_state, params
    )
    return optax.apply_updates(params, updates), opt_state

  return jax.jit(
      jax.vmap(one, in_axes=(0, 0, 0, None, None)), donate_argnums=(0, 1)
  )


def train_probes(
    feats: np.ndarray,
    labels: np.ndarray,
    peaks,
    *,
    num_classes: int,
    steps: int,
    batch_size: int,
    momentum: float,
    seed: int
):
  """K probes on features [N, D], one per peak rate, on the same batches.

  One device (every host computes the same); params with a leading axis K.
  """
  clf = classifier(num_classes)
  init = clf.init(
      jax.random.PRNGKey(0), np.zeros((1, feats.shape[-1]), np.float32)
  )
  k = len(peaks)
  params = jax.tree.map(lambda x: np.repeat(np.asarray(x)[None], k, 0), init)
  opt_state = jax.vmap(_probe_optimizer(1.0, steps, momentum).init)(params)
  step = _probes_step(num_classes, steps, momentum)
  peaks = np.asarray(peaks, np.float32)
  batches = _feature_batches(feats, labels, batch_size, seed)
  for _, (x, y) in zip(range(steps), batches):
    params, opt_state = step(params, opt_state, peaks, x, y)
  return jax.device_get(params)


def _valid_indices(source, n: int, num_valid: int) -> np.ndarray:
  """The sweep's held-out examples among the n of the training split."""
  if isinstance(source, sources.TfdsSource):
    return np.arange(num_valid)  # train[:N], as the ImageNet protocol.
  rng = np.random.default_rng(features.SUBSET_SEED)
  return np.sort(rng.choice(n, num_valid, replace=False))


def sweep_learning_rate(config, source, train, num_classes: int, valid=None):
  """(index of the chosen rate, {base rate: held-out top-1}).

  valid: the dataset's own validation split's (features, labels) (ImageNet's
  train[:10000]); None: derived.eval_sweep_valid_examples of train held out.
  """
  e, d = config.eval, config.derived
  feats, labels = train
  if valid is None:
    held = _valid_indices(source, len(labels), d.eval_sweep_valid_examples)
    rest = np.setdiff1d(np.arange(len(labels)), held)
    valid = feats[held], labels[held]
    feats, labels = feats[rest], labels[rest]
  probes = train_probes(
      feats,
      labels,
      d.eval_peak_learning_rates,
      num_classes=num_classes,
      steps=d.eval_sweep_steps,
      batch_size=e.global_batch_size,
      momentum=e.momentum,
      seed=config.seed,
  )
  clf = classifier(num_classes)
  logits = jax.jit(jax.vmap(clf.apply, in_axes=(0, None)))(probes, valid[0])
  top1 = np.asarray(
      jax.vmap(lambda l: losses.topk_correct(l, valid[1], 1).mean())(logits)
  )
  chosen = int(np.argmax(top1))  # ties: the first (largest) rate in the grid
  table = {str(rate): float(t) for rate, t in zip(e.learning_rates, top1)}
  logging.info(
      'Linear probe learning rate: %s chosen on %d held-out '
      'examples (top-1 per base rate: %s)',
      e.learning_rates[chosen],
      len(valid[1]),
      table,
  )
  return chosen, table


def _train_augmented(config, source, params, state, num_classes, peak, devices):
  """The probe on per-step random crops of train (frozen encoder), pmapped."""
  e, d = config.eval, config.derived
  local = list(devices or jax.local_devices())
  steps = d.eval_steps
  optimizer = _probe_optimizer(peak, steps, e.momentum)
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
  clf = classifier(num_classes)
  dim = resnet.feature_size(config.model.depth, config.model.width_multiplier)
  clf_params = clf.init(jax.random.PRNGKey(0), np.zeros((1, dim), np.float32))
  opt_state = optimizer.init(clf_params)
  step_fn = parallel.device_program(
      make_train_step(make_loss(config, num_classes, encode=True), optimizer),
      devices=devices,
      donate_argnums=(0, 1),
  )
  rclf, ropt = parallel.replicate((clf_params, opt_state), local)
  renc = parallel.replicate((params, state), local)
  log_every = max(1, steps // 10)
  batches = pipeline.prefetch_to_device(it, devices=local)
  first = next(batches)
  hosts.compile_then_sync(
      step_fn,
      rclf,
      ropt,
      *renc,
      first['image'],
      first['label'],
      name='the linear probe step'
  )
  for i, batch in zip(range(steps), itertools.chain([first], batches)):
    rclf, ropt, metrics = step_fn(
        rclf, ropt, *renc, batch['image'], batch['label']
    )
    if (i + 1) % log_every == 0 or i + 1 == steps:
      m = jax.device_get(parallel.unreplicate(metrics))
      logging.info(
          'linear eval step %d/%d: loss %.4f, batch top-1 %.3f',
          i + 1,
          steps,
          m['loss'],
          m['top1'],
      )
  return jax.device_get(parallel.unreplicate(rclf))


def train_final_probe(
    config,
    source,
    params,
    state,
    train,
    num_classes: int,
    peak: float,
    devices=None,
):
  """The probe on all of eval.train_split at `peak`, on crops or features.

  eval.augment: per-step random crops through the frozen encoder; else the
  precomputed centre-crop features `train`.
  """
  e, d = config.eval, config.derived
  if e.augment:
    return _train_augmented(
        config, source, params, state, num_classes, peak, devices
    )
  return jax.tree.map(
      lambda x: x[0],
      train_probes(
          train[0],
          train[1],
          [peak],
          num_classes=num_classes,
          steps=d.eval_steps,
          batch_size=e.global_batch_size,
          momentum=e.momentum,
          seed=config.seed,
      ),
  )
