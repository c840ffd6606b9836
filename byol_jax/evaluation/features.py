"""Frozen-encoder features of a split, and the kNN monitor.

The pre-training data paths: in-memory splits are centre-cropped on the devices
from the copy already there, the kNN subset as indices into it. Multi-host:
features are all-gathered, so every host computes the same numbers.
"""

import dataclasses
import functools
import itertools
from typing import Optional

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from byol_jax import encoder as encoder_lib
from byol_jax import losses
from byol_jax.data import pipeline
from byol_jax.data import sources
from byol_jax.hosts import parallel
from byol_jax.hosts import sync
from byol_jax.methods import networks

# kNN monitor: Wu et al. 2018's weighted kNN, DINO's k = 20, T = 0.07 (2021).
KNN_K = 20
KNN_TEMPERATURE = 0.07
SUBSET_SEED = 0  # fixed, so kNN numbers are comparable across steps/runs.
# Pixels per device per feature batch (4096 images at 32 px, 334 at 224 px): a
# split in a few large batches; inference keeps no activations for a backward.
FEATURE_PIXELS_PER_DEVICE = 2**24


@functools.lru_cache(maxsize=8)
def _pmapped_encoder(config: ml_collections.FrozenConfigDict, devices):
  """encoder.encoder_apply on every device, cached: no recompiling."""
  apply = encoder_lib.encoder_apply(config)
  return parallel.device_program(apply, axis_name=None, devices=devices)


def subset_indices(n: int, max_examples: Optional[int]) -> np.ndarray:
  """Sorted indices of a fixed subset of range(n) (all: None, 0 or >= n)."""
  if max_examples is None or not 0 < max_examples < n:
    return np.arange(n)
  rng = np.random.default_rng(SUBSET_SEED)
  return np.sort(rng.choice(n, max_examples, replace=False))


def feature_batch_size(
    image_size: int, num_examples: int, local_devices: int, process_count: int
) -> int:
  """Images per feature batch over all hosts, no more than the split needs."""
  per_host = -(-num_examples // process_count)
  per_device = min(
      FEATURE_PIXELS_PER_DEVICE // image_size**2, -(-per_host // local_devices)
  )
  return max(1, per_device) * local_devices * process_count


def extract_features(
    config, source, params, state, *, split, max_examples=None, devices=None
):
  """(features float32 [N, D], labels int32 [N]) of a split's centre crops."""
  local = list(devices or jax.local_devices())
  n = source.num_examples(split)
  max_examples = max_examples if 0 < (max_examples or 0) < n else None
  indices = None
  # max_examples: a fixed random subset (folders are sorted by class), or the
  # first ones (TFDS: files shuffled when prepared).
  if max_examples and not isinstance(source, sources.TfdsSource):
    indices, n = subset_indices(n, max_examples), max_examples
    if isinstance(source, sources.FolderSource):
      raw = source.resolve_split(split)
      source = dataclasses.replace(
          source,
          files={**source.files, raw: source.files[raw][indices]},
          labels={**source.labels, raw: source.labels[raw][indices]},
      )
      split, indices = raw, None
  gb = feature_batch_size(
      config.data.image_size, n, len(local), jax.process_count()
  )
  it = pipeline.make_eval_iterator(
      source,
      split=split,
      global_batch_size=gb,
      image_size=config.data.image_size,
      local_device_count=len(local),
      in_memory_on=config.data.get('in_memory_on', 'device'),
      indices=indices,
  )
  fn = _pmapped_encoder(
      ml_collections.FrozenConfigDict({'model': config.model}),
      None if devices is None else tuple(local),
  )
  rparams, rstate = parallel.replicate(
      [networks.restrict(x, ('encoder',)) for x in (params, state)], local
  )
  # TFDS: the first max_examples' batches.
  num_batches = pipeline.num_eval_batches(max_examples or n, gb)
  out = [], [], []
  for batch in itertools.islice(
      pipeline.prefetch_to_device(it, devices=local), num_batches
  ):
    feats = fn(rparams, rstate, batch['image'])
    for x, y in zip(out, (feats, batch['label'], batch['mask'])):
      x.append(np.asarray(y).reshape(-1, *y.shape[2:]))
  out = [np.concatenate(x) for x in out]
  if jax.process_count() > 1:
    # Hosts arrive after unequal work; CPU hosts must meet (sync.barrier).
    sync.barrier('features extracted')
    out = multihost_utils.process_allgather(out, tiled=True)
  feats, labels, masks = out
  feats, labels = feats[masks][:max_examples], labels[masks][:max_examples]
  return feats.astype(np.float32), labels.astype(np.int32)


@functools.partial(jax.jit, static_argnums=(5, 6, 7))
def _knn_correct(train, labels, test, test_labels, t, num_classes, k, batch):
  """Number of test points whose weighted-kNN vote is their label."""
  train, test = losses.l2_normalize(train), losses.l2_normalize(test)

  def one(xy):
    # HIGHEST: the default TPU matmul precision (bf16) reorders near neighbours.
    sim = jnp.dot(train, xy[0], precision=jax.lax.Precision.HIGHEST)
    top_sim, top_idx = jax.lax.top_k(sim, k)
    weights = jnp.exp(top_sim / t)[:, None]
    votes = jnp.sum(jax.nn.one_hot(labels[top_idx], num_classes) * weights, 0)
    return jnp.argmax(votes) == xy[1]

  return jnp.sum(jax.lax.map(one, (test, test_labels), batch_size=batch))


def knn_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    *,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    batch_size: int = 256,
) -> float:
  """Top-1 in [0, 1] of Wu et al.'s weighted kNN (2018, §3.4; k 200 there): on
  L2-normalised features the k training points of highest cosine s_i vote
  sum_i exp(s_i / T) [y_i = c]; batch_size test points at a time."""
  args = (train_features, train_labels, test_features, test_labels)
  shapes = [np.shape(x) for x in args]
  n, m, d = np.size(train_labels), np.size(test_labels), shapes[0][1:]
  if len(d) != 1 or not m or shapes != [(n, *d), (n,), (m, *d), (m,)]:
    raise ValueError(
        'need features [N, D] of one D and labels [N] (train features, '
        f'labels, test features, labels); got shapes {shapes}.'
    )
  if not 1 <= k <= n:
    raise ValueError(f'k={k} must be in [1, {n}] (the train set size).')
  correct = _knn_correct(*args, temperature, num_classes, k, min(batch_size, m))
  return int(correct) / m


def knn_top1(config, num_classes: int, train, test) -> float:
  """Weighted kNN top-1 of test features against (a subset of) train's."""
  idx = subset_indices(len(train[1]), config.logging.knn_max_train_examples)
  return knn_accuracy(
      *(x[idx] for x in train),
      *test,
      num_classes=num_classes,
      k=min(KNN_K, len(idx)),
  )


def knn_eval(config, num_classes: int, source, params, state) -> float:
  """The kNN monitor: knn_top1 of eval.test_split against linear_train's."""
  extract = functools.partial(extract_features, config, source, params, state)
  max_train = config.logging.knn_max_train_examples
  train = extract(split='linear_train', max_examples=max_train)
  test = extract(split=config.eval.test_split)
  return knn_top1(config, num_classes, train, test)
