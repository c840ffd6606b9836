"""Linear evaluation of a frozen encoder (the paper's protocol) and kNN.

Protocol (BYOL Appendix C.1, used unchanged by Richemond et al. 2020, §3):
the encoder is frozen and run in inference mode; a linear classifier on its
representation is trained with SGD + Nesterov momentum 0.9, no weight decay,
a cosine-decayed learning rate, batch 1024 for 80 epochs, on random-resized
crops with horizontal flips; top-1 / top-5 are measured on centre crops.

Learning rate: the protocol picks it from {0.4, 0.3, 0.2, 0.1, 0.05}
(`config.eval.learning_rates`) on a held-out part of train, then trains the
probe on all of its training split at the chosen rate and reports test
top-1. On ImageNet the rate is selected on train[:10000] ('linear_valid')
with the probes trained on train[10000:] ('linear_train', also the final
probe's data), as the official byol/utils/dataset.py splits it; any dataset
with its own validation split does the same (plan.sweep_valid_split). As the
official code (byol/eval_experiment.py, byol/utils/schedules.py), each rate
is a base rate for batch 256, scaled to base * global_batch / 256, cosine
decayed to 0, no warm-up.

The selection (`sweep_learning_rate`) runs on frozen centre-crop features,
extracted once; the grid's probes are trained together (vmapped over the
rate) on the same batches, so the sweep costs about one probe on features.
Where the protocol trains on augmented crops (`eval.augment=True`), the rate
is thus chosen without augmentation; that is our simplification (the
official code re-runs the augmented probe per rate), stated in
eval_results.json as 'sweep_on': 'centre-crop features'. Datasets without
a validation split hold out `eval.sweep_valid_examples` training examples
for the selection instead, the first ones for TFDS
sources (shuffled when prepared: train[:N]) and a fixed random subset for
folders and in-memory sources (sorted by class).

With `config.eval.augment=False` the representation of every training image
is computed once (centre crop) and the classifier is trained on those: the
same optimisation without augmentation, orders of magnitude cheaper on CPU.

Data: the same pipelines as pre-training. In-memory datasets (digits,
synthetic, image folders that fit) are read from the copy already on the
devices and centre-cropped / randomly cropped there; features of a split are
computed in a few large batches (`feature_batch_size`: about 2**24 pixels
per device), and the kNN monitor's fixed subset is a list of indices into
that copy, not a second copy.

Multi-host: every host runs the same steps; features are all-gathered, so
every host computes the same numbers; only process 0 writes files.
"""

import dataclasses
import functools
import itertools
import json
from typing import Optional

from absl import logging
from etils import epath
import haiku as hk
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax

from byol_jax import distributed
from byol_jax import encoder as encoder_lib
from byol_jax import losses
from byol_jax import plan
from byol_jax import train_state as ts
from byol_jax.data import pipeline
from byol_jax.data import sources
from byol_jax.evaluation import monitors
from byol_jax.models import heads
from byol_jax.models import resnet
from byol_jax.methods import networks

RESULTS_FILE = 'eval_results.json'
# kNN monitor: k = 20 neighbours, T = 0.07 (monitors.knn_accuracy's defaults:
# the weighted kNN of Wu et al. 2018 with DINO's k = 20, Caron et al. 2021).
KNN_K = 20
KNN_TEMPERATURE = 0.07
_SUBSET_SEED = 0  # fixed, so kNN numbers are comparable across steps/runs.

encoder_apply = encoder_lib.encoder_apply  # fn(params, state, images) -> [N, D]


def _num_classes(config) -> int:
  return config.derived.num_classes


# ------------------------------------------------------------- features
@functools.lru_cache(maxsize=8)
def _pmapped_encoder(model_json: str, devices: Optional[tuple]):
  """pmapped encoder_apply, cached so monitors do not recompile each call."""
  config = ml_collections.ConfigDict({'model': json.loads(model_json)})
  return jax.pmap(encoder_apply(config), devices=devices)


def _subset_indices(n: int, max_examples: Optional[int]) -> np.ndarray:
  """A fixed random subset (sorted) of range(n); all of it for None / <= 0."""
  if max_examples is None or max_examples <= 0 or max_examples >= n:
    return np.arange(n)
  rng = np.random.default_rng(_SUBSET_SEED)
  return np.sort(rng.choice(n, max_examples, replace=False))


def _limit(source, split: str, max_examples: Optional[int]):
  """(source, split, max_examples left to cut, indices) for about N examples.

  Image folders are sorted by class, so the first N images would hold only a
  few classes: for in-memory and folder sources we read a fixed random subset
  instead (in memory: `indices` into the split's one copy on the devices; a
  streamed folder: a source listing only those files). TFDS files are
  shuffled when prepared, so for them reading stops after enough batches.
  """
  if (max_examples is None or max_examples <= 0 or
      max_examples >= source.num_examples(split)):
    return source, split, None, None
  idx = _subset_indices(source.num_examples(split), max_examples)
  if isinstance(source, sources.InMemorySource):
    return source, split, None, idx
  if isinstance(source, sources.FolderSource):
    raw = source.resolve_split(split)
    return dataclasses.replace(
        source, files={**source.files, raw: source.files[raw][idx]},
        labels={**source.labels, raw: source.labels[raw][idx]}
    ), raw, None, None
  return source, split, max_examples, None


# Feature extraction runs the frozen encoder on about this many pixels per
# device per batch (4096 images at 32 px, 334 at 224 px): a split in a few
# large batches; inference keeps no activations for a backward pass.
FEATURE_PIXELS_PER_DEVICE = 2**24


def feature_batch_size(image_size: int, num_examples: int,
                       local_devices: int, process_count: int) -> int:
  """Images per feature-extraction batch, over all hosts.

  FEATURE_PIXELS_PER_DEVICE / image_size^2 per device, but no more than the
  split needs (a 297-image split is one batch, not a padded 4096).

  Returns:
    A positive multiple of local_devices * process_count.
  """
  per_host = -(-num_examples // process_count)
  per_device = min(max(1, FEATURE_PIXELS_PER_DEVICE // image_size**2),
                   -(-per_host // local_devices))
  return max(1, per_device) * local_devices * process_count


def extract_features(config, source, params, state, *, split: str,
                     max_examples: Optional[int] = None, devices=None):
  """Representations of one pass over `split` (centre crops, frozen encoder).

  Args:
    config: the experiment config (model, data.image_size and
      data.in_memory_on are read). Batches: `feature_batch_size`.
    source: a data source (sources.get_source).
    params: unreplicated encoder params (trees with other modules are fine).
    state: unreplicated encoder state (BN moving averages).
    split: logical or raw split name.
    max_examples: read at most this many examples: a fixed random subset for
      in-memory / folder sources, the first ones for TFDS.
    devices: local devices to pmap over (default: all; must be all of them
      on multi-host runs).

  Returns:
    (features float32 [N, D], labels int32 [N]) as NumPy, padding dropped;
    on multi-host runs gathered from every host.
  """
  local = list(devices or jax.local_devices())
  source, split, max_examples, indices = _limit(source, split, max_examples)
  n = source.num_examples(split) if indices is None else len(indices)
  gb = feature_batch_size(config.data.image_size, n, len(local),
                          jax.process_count())
  it = pipeline.make_eval_iterator(
      source, split=split, global_batch_size=gb,
      image_size=config.data.image_size, local_device_count=len(local),
      in_memory_on=config.data.get('in_memory_on', 'device'),
      indices=indices)
  num_batches = pipeline.num_eval_batches(n, gb)
  if max_examples is not None:
    num_batches = min(num_batches, -(-max_examples // gb))
  fn = _pmapped_encoder(config.model.to_json(),
                        None if devices is None else tuple(local))
  rparams = ts.replicate(networks.restrict(params, ('encoder',)), local)
  rstate = ts.replicate(networks.restrict(state, ('encoder',)), local)
  feats, labels, masks = [], [], []
  for _, batch in zip(range(num_batches),
                      pipeline.prefetch_to_device(it, devices=local)):
    out = fn(rparams, rstate, batch['image'])
    feats.append(np.asarray(out).reshape(-1, out.shape[-1]))
    labels.append(np.asarray(batch['label']).reshape(-1))
    masks.append(np.asarray(batch['mask']).reshape(-1))
  feats, labels, masks = (np.concatenate(x) for x in (feats, labels, masks))
  if jax.process_count() > 1:
    # Hosts arrive after unequal work (compiling, reading); see
    # distributed.barrier for why CPU hosts must meet before a collective.
    distributed.barrier('features extracted')
    feats, labels, masks = (
        np.asarray(multihost_utils.process_allgather(x, tiled=True))
        for x in (feats, labels, masks))
  feats, labels = feats[masks], labels[masks]
  if max_examples is not None:
    feats, labels = feats[:max_examples], labels[:max_examples]
  return feats.astype(np.float32), labels.astype(np.int32)


def _knn(config, num_classes, train, test) -> float:
  feats, labels = train
  idx = _subset_indices(len(labels), config.logging.knn_max_train_examples)
  return monitors.knn_accuracy(
      feats[idx], labels[idx], test[0], test[1], num_classes=num_classes,
      k=min(KNN_K, len(idx)), temperature=KNN_TEMPERATURE)


def knn_eval(config, source, params, state, *, devices=None) -> float:
  """Weighted kNN top-1 of the frozen encoder (a cheap training monitor).

  Reference set: up to config.logging.knn_max_train_examples images of the
  'linear_train' split (a fixed subset); queries: config.eval.test_split;
  centre crops; k = KNN_K, T = KNN_TEMPERATURE (see monitors.knn_accuracy).

  Args:
    config: the experiment config.
    source: the data source.
    params: unreplicated online params (only 'encoder' modules are used).
    state: unreplicated online state.
    devices: local devices to pmap over (default: all).

  Returns:
    Accuracy in [0, 1].
  """
  train = extract_features(
      config, source, params, state, split='linear_train',
      max_examples=config.logging.knn_max_train_examples, devices=devices)
  test = extract_features(config, source, params, state,
                          split=config.eval.test_split, devices=devices)
  return _knn(config, _num_classes(config), train, test)


# --------------------------------------------------------- linear probe
def _classifier(num_classes: int) -> hk.Transformed:
  return hk.without_apply_rng(hk.transform(
      lambda x: heads.LinearClassifier(num_classes, zero_init=True)(x)))


def make_loss(config, num_classes: int, *, encode: bool):
  """The probe's loss(clf_params, enc_params, enc_state, inputs, labels).

  Args:
    config: the experiment config.
    num_classes: classifier outputs.
    encode: inputs are images in [0, 1] passed through the frozen encoder
      (augmented training); else inputs are precomputed features.

  Returns:
    loss(...) -> (mean cross-entropy, logits). Its gradient with respect to
    the encoder arguments is zero: the representation is stop-gradient'ed.
  """
  classifier = _classifier(num_classes)
  enc = encoder_apply(config) if encode else None

  def loss(clf_params, enc_params, enc_state, inputs, labels):
    feats = enc(enc_params, enc_state, inputs) if encode else inputs
    # Frozen encoder (BYOL App. C.1): nothing flows back into it.
    feats = jax.lax.stop_gradient(feats)
    logits = classifier.apply(clf_params, feats)
    return losses.softmax_cross_entropy(logits, labels), logits
  return loss


def make_train_step(loss_fn, optimizer: optax.GradientTransformation,
                    axis_name: Optional[str] = ts.AXIS_NAME):
  """step(clf_params, opt_state, enc_params, enc_state, inputs, labels).

  Differentiates only the classifier parameters; gradients are pmean'd over
  axis_name (the mean over the global batch, as the official psum of
  loss / num_devices). Returns (clf_params, opt_state, metrics).
  """
  def step(clf_params, opt_state, enc_params, enc_state, inputs, labels):
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        clf_params, enc_params, enc_state, inputs, labels)
    metrics = {'loss': loss,
               'top1': losses.topk_correct(logits, labels, 1).mean()}
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      metrics = jax.lax.pmean(metrics, axis_name)
    updates, opt_state = optimizer.update(grads, opt_state, clf_params)
    return optax.apply_updates(clf_params, updates), opt_state, metrics
  return step


def _feature_batches(feats, labels, host_batch, ndev, seed):
  """Infinite per-epoch-shuffled batches of precomputed features."""
  n = len(labels)
  step = 0
  perms = {}
  while True:
    pos = step * host_batch + np.arange(host_batch)
    idx = np.empty_like(pos)
    for e in np.unique(pos // n):
      if e not in perms:
        perms = {e: np.random.default_rng([seed, int(e)]).permutation(n)}
      sel = pos // n == e
      idx[sel] = perms[e][pos[sel] % n]
    yield {'image': feats[idx].reshape(ndev, -1, feats.shape[-1]),
           'label': labels[idx].reshape(ndev, -1)}
    step += 1


def _probe_optimizer(peak, steps: int, momentum: float):
  """SGD + Nesterov momentum, lr peak x cosine to 0 over `steps` (official)."""
  cosine = optax.cosine_decay_schedule(1., steps)
  return optax.sgd(lambda step: peak * cosine(step), momentum=momentum,
                   nesterov=True)


@functools.lru_cache(maxsize=8)
def _probes_step(num_classes: int, steps: int, momentum: float):
  """jit(step) training K probes at K peak rates on one batch (vmapped)."""
  classifier = _classifier(num_classes)

  def one(params, opt_state, peak, feats, labels):
    def loss(p):
      return losses.softmax_cross_entropy(classifier.apply(p, feats), labels)
    grads = jax.grad(loss)(params)
    updates, opt_state = _probe_optimizer(peak, steps, momentum).update(
        grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None, None)),
                 donate_argnums=(0, 1))


def train_probes(feats: np.ndarray, labels: np.ndarray, peaks, *,
                 num_classes: int, steps: int, batch_size: int,
                 momentum: float, seed: int):
  """Linear probes on frozen features, one per peak rate, trained together.

  Every probe starts from the same (zero) weights and sees the same
  batches (per-epoch shuffles of `seed`); probe k follows SGD + Nesterov
  momentum with lr peaks[k] x cosine. One device; every host computes the
  same (the features are all-gathered).

  Args:
    feats: [N, D] float32 features.
    labels: [N] int32 labels in [0, num_classes).
    peaks: K peak learning rates.
    num_classes: classifier outputs.
    steps: SGD steps.
    batch_size: examples per step.
    momentum: Nesterov momentum.
    seed: the batch order.

  Returns:
    Classifier params with a leading axis of size K (host NumPy).
  """
  classifier = _classifier(num_classes)
  init = classifier.init(jax.random.PRNGKey(0),
                         np.zeros((1, feats.shape[-1]), np.float32))
  k = len(peaks)
  params = jax.tree.map(lambda x: np.repeat(np.asarray(x)[None], k, 0), init)
  opt_state = jax.vmap(_probe_optimizer(1., steps, momentum).init)(params)
  step = _probes_step(num_classes, steps, momentum)
  peaks = np.asarray(peaks, np.float32)
  batches = _feature_batches(feats, labels, batch_size, 1, seed)
  for _, batch in zip(range(steps), batches):
    params, opt_state = step(params, opt_state, peaks, batch['image'][0],
                             batch['label'][0])
  return jax.device_get(params)


def _valid_indices(source, n: int, num_valid: int) -> np.ndarray:
  """The sweep's held-out examples among the n of the training split."""
  if isinstance(source, sources.TfdsSource):
    return np.arange(num_valid)  # train[:N], as the ImageNet protocol.
  rng = np.random.default_rng(_SUBSET_SEED)
  return np.sort(rng.choice(n, num_valid, replace=False))


def sweep_learning_rate(config, source, train, num_classes: int,
                        valid=None):
  """Chooses the probe's learning rate on held-out training data.

  Args:
    config: the built config (eval.learning_rates, the derived
      eval_sweep_valid_examples / eval_sweep_steps are read).
    source: the data source (TFDS: the first examples are held out).
    train: (features [N, D] float32, labels [N] int) of the whole training
      split.
    num_classes: classifier outputs.
    valid: (features, labels) of the dataset's own validation split
      (config.derived.eval_sweep_valid_split, e.g. ImageNet's train[:10000]);
      the probes then train on all of `train`. None: the derived
      eval_sweep_valid_examples of `train` are held out and the probes train
      on the rest.

  Returns:
    (index of the chosen rate in eval.learning_rates, {base rate: held-out
    top-1 of its probe, a fraction in [0, 1]}).
  """
  e, d = config.eval, config.derived
  feats, labels = train
  if valid is None:
    held = _valid_indices(source, len(labels), d.eval_sweep_valid_examples)
    rest = np.setdiff1d(np.arange(len(labels)), held)
    valid = feats[held], labels[held]
    feats, labels = feats[rest], labels[rest]
  probes = train_probes(
      feats, labels, d.eval_peak_learning_rates,
      num_classes=num_classes, steps=d.eval_sweep_steps,
      batch_size=e.global_batch_size, momentum=e.momentum, seed=config.seed)
  classifier = _classifier(num_classes)
  logits = jax.jit(jax.vmap(classifier.apply, in_axes=(0, None)))(
      probes, valid[0])
  top1 = np.asarray(jax.vmap(
      lambda l: losses.topk_correct(l, valid[1], 1).mean())(logits))
  chosen = int(np.argmax(top1))  # ties: the first (largest) rate in the grid
  table = {str(rate): float(t) for rate, t in zip(e.learning_rates, top1)}
  logging.info('Linear probe learning rate: %s chosen on %d held-out '
               'examples (top-1 per base rate: %s)', e.learning_rates[chosen],
               len(valid[1]), table)
  return chosen, table


def _train_augmented(config, source, params, state, num_classes, peak,
                     devices):
  """The probe on per-step random crops of train (frozen encoder), pmapped."""
  e, d = config.eval, config.derived
  local = list(devices or jax.local_devices())
  steps = d.eval_steps
  optimizer = _probe_optimizer(peak, steps, e.momentum)
  it = pipeline.make_supervised_iterator(
      source, split=e.train_split, global_batch_size=e.global_batch_size,
      image_size=config.data.image_size, seed=config.seed,
      local_device_count=len(local),
      min_crop_area=config.data.get('min_crop_area', 0.08),
      in_memory_on=config.data.get('in_memory_on', 'device'))
  classifier = _classifier(num_classes)
  dim = resnet.feature_size(config.model.depth, config.model.width_multiplier)
  clf_params = classifier.init(jax.random.PRNGKey(0),
                               np.zeros((1, dim), np.float32))
  opt_state = optimizer.init(clf_params)
  step_fn = jax.pmap(
      make_train_step(make_loss(config, num_classes, encode=True), optimizer),
      axis_name=ts.AXIS_NAME, devices=devices, donate_argnums=(0, 1))
  rclf, ropt = ts.replicate((clf_params, opt_state), local)
  renc = ts.replicate((params, state), local)
  log_every = max(1, steps // 10)
  batches = pipeline.prefetch_to_device(it, devices=local)
  first = next(batches)
  distributed.compile_then_sync(step_fn, rclf, ropt, *renc, first['image'],
                                first['label'], name='the linear probe step')
  for i, batch in zip(range(steps), itertools.chain([first], batches)):
    rclf, ropt, metrics = step_fn(rclf, ropt, *renc, batch['image'],
                                  batch['label'])
    if (i + 1) % log_every == 0 or i + 1 == steps:
      m = jax.device_get(ts.unreplicate(metrics))
      logging.info('linear eval step %d/%d: loss %.4f, batch top-1 %.3f',
                   i + 1, steps, m['loss'], m['top1'])
  return jax.device_get(ts.unreplicate(rclf))


def _probe(config, source, params, state, num_classes, devices, test=None):
  """Selects the rate, trains and tests a linear probe on one encoder."""
  e, d = config.eval, config.derived
  params = networks.restrict(params, ('encoder',))
  state = networks.restrict(state, ('encoder',))
  if test is None:
    test = extract_features(config, source, params, state,
                            split=e.test_split, devices=devices)
  sweep = len(e.learning_rates) > 1
  # The sweep and the feature-based probe need every training example's
  # features; the augmented probe alone needs only the kNN reference set.
  every = sweep or not e.augment
  train = extract_features(
      config, source, params, state, split=e.train_split,
      max_examples=None if every else config.logging.knn_max_train_examples,
      devices=devices)
  results = {}
  chosen = 0
  if sweep:
    valid = None
    if d.eval_sweep_valid_split:
      valid = extract_features(config, source, params, state,
                               split=d.eval_sweep_valid_split,
                               devices=devices)
    chosen, results['sweep'] = sweep_learning_rate(config, source, train,
                                                   num_classes, valid)
    results.update(sweep_on='centre-crop features',
                   sweep_valid_split=d.eval_sweep_valid_split or
                   f'{d.eval_sweep_valid_examples} of {e.train_split}',
                   sweep_valid_examples=int(d.eval_sweep_valid_examples))
  peak = d.eval_peak_learning_rates[chosen]
  if e.augment:
    clf_params = _train_augmented(config, source, params, state, num_classes,
                                  peak, devices)
  else:
    clf_params = jax.tree.map(lambda x: x[0], train_probes(
        train[0], train[1], [peak], num_classes=num_classes,
        steps=d.eval_steps, batch_size=e.global_batch_size,
        momentum=e.momentum, seed=config.seed))
  logits = jax.jit(_classifier(num_classes).apply)(clf_params, test[0])
  top5 = min(5, num_classes)
  results.update({
      'top1': float(losses.topk_correct(logits, test[1], 1).mean()),
      'top5': float(losses.topk_correct(logits, test[1], top5).mean()),
      'knn_top1': _knn(config, num_classes, train, test),
      'num_train': int(d.eval_num_train_examples),
      'num_test': int(len(test[1])),
      'epochs': int(e.num_epochs), 'steps': int(d.eval_steps),
      'base_learning_rate': float(e.learning_rates[chosen]),
      'learning_rate': float(peak), 'global_batch_size':
          int(e.global_batch_size), 'augment': bool(e.augment),
  })
  return results


def online_top1(params, test, num_classes: int) -> Optional[float]:
  """Test top-1 of the online classifier trained during pre-training.

  The official code scores it on the test split too: the linear classifier
  the pre-training loss trains on the stop-gradient representation
  (networks.classifier_and_monitors), applied to the eval-mode features.

  Args:
    params: online params; None is returned when they hold no classifier
      or its class count differs from the evaluation data's.
    test: (features [N, D], labels [N]) of the test split.
    num_classes: the evaluation data's classes.

  Returns:
    Top-1 in [0, 1], or None.
  """
  clf = params.get('classifier/linear') if hasattr(params, 'get') else None
  if clf is None or clf['w'].shape[-1] != num_classes:
    return None
  logits = jax.jit(_classifier(num_classes).apply)(
      {'classifier/linear': clf}, test[0])
  return float(losses.topk_correct(logits, test[1], 1).mean())


def _percent(x):
  return f'{100. * x:.2f}%'


def run_linear_eval(config, workdir, params, state, *, source,
                    tag: str = '', devices=None,
                    extra: Optional[dict] = None) -> dict:
  """Linear evaluation of a frozen encoder; writes WORKDIR/eval_results.json.

  Args:
    config: a built config (plan.build; its `eval`, `model`, `data` and
      `derived` sections are read).
    workdir: where eval_results.json goes (local or gs://).
    params: unreplicated online params (only 'encoder/...' modules are used).
    state: unreplicated online state (BN moving averages).
    source: the data source plan.build opened.
    tag: free-form label stored in the results.
    devices: local devices to pmap over (default: all; tests use fewer).
    extra: more JSON-able entries for the results (e.g. checkpoint step).

  Returns:
    {'top1', 'top5', 'knn_top1', 'num_train', 'num_test', 'epochs', 'steps',
    'learning_rate', 'base_learning_rate', 'sweep' (held-out top-1 per base
    rate, when eval.learning_rates has several), 'online_top1' (the
    pre-training run's online classifier on the test split, when `params`
    holds it), 'tag', ...}, accuracies in [0, 1] (top5: top-min(5,
    classes)); with config.eval.random_baseline also 'random_init': the same
    numbers for a randomly initialised encoder of the same architecture.
  """
  plan.check_built(config)
  num_classes = _num_classes(config)
  enc_params = networks.restrict(params, ('encoder',))
  enc_state = networks.restrict(state, ('encoder',))
  test = extract_features(config, source, enc_params, enc_state,
                          split=config.eval.test_split, devices=devices)
  results = _probe(config, source, enc_params, enc_state, num_classes,
                   devices, test=test)
  online = online_top1(params, test, num_classes)
  if online is not None:
    results['online_top1'] = online
  results.update(tag=tag, **(extra or {}))
  logging.info('Linear eval%s: top-1 %s, top-%d %s, kNN top-1 %s (%d train / '
               '%d test images, %d steps)', f' [{tag}]' if tag else '',
               _percent(results['top1']), min(5, num_classes),
               _percent(results['top5']), _percent(results['knn_top1']),
               results['num_train'], results['num_test'], results['steps'])
  if config.eval.random_baseline:
    rparams, rstate = encoder_lib.random_encoder(config)
    results['random_init'] = _probe(config, source, rparams, rstate,
                                    num_classes, devices)
    logging.info('trained encoder top-1 %s vs random encoder top-1 %s',
                 _percent(results['top1']),
                 _percent(results['random_init']['top1']))
  if jax.process_index() == 0:
    path = epath.Path(workdir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (RESULTS_FILE + '.tmp')
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)  # readers never see a half-written file
    logging.info('Wrote %s', path)
  return results


def run_linear_eval_from_workdir(config, workdir, *, source,
                                 extra: Optional[dict] = None) -> dict:
  """Linear evaluation of config.eval.pretrain_workdir's encoder.

  Args:
    config: the built linear-evaluation config (plan.build merged it with
      the pre-training run's config, plan.eval_inputs).
    workdir: output directory (may be the pre-training workdir itself).
    source: the data source plan.build opened.
    extra: more JSON-able entries for the results.

  Returns:
    The results dict of run_linear_eval (plus 'pretrain_workdir',
    'checkpoint_step', 'pretrain_finished', 'data_source'), also written to
    WORKDIR/eval_results.json.

  Raises:
    FileNotFoundError: the pre-training run holds no checkpoint.
  """
  plan.check_built(config)
  pretrained = encoder_lib.load_pretrained(config.eval.pretrain_workdir)
  return run_linear_eval(
      config, workdir, pretrained.params, pretrained.state, source=source,
      extra={'pretrain_workdir': pretrained.workdir,
             'checkpoint_step': pretrained.step,
             'pretrain_finished': bool(config.derived.pretrain_finished),
             'data_source': config.data.source, **(extra or {})})
