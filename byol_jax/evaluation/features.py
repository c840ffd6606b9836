"""Frozen-encoder features of a split, and the kNN monitor.

Data: the same pipelines as pre-training. In-memory datasets (digits,
synthetic, image folders that fit) are read from the copy already on the
devices and centre-cropped there; features of a split are computed in a few
large batches (`feature_batch_size`: about 2**24 pixels per device), and the
kNN monitor's fixed subset is a list of indices into that copy, not a second
copy.

Multi-host: every host runs the same steps; features are all-gathered, so
every host computes the same numbers.
"""

import dataclasses
import functools
from typing import Optional

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from byol_jax import encoder as encoder_lib
from byol_jax import hosts
from byol_jax import parallel
from byol_jax.data import pipeline
from byol_jax.data import sources
from byol_jax.evaluation import monitors
from byol_jax.methods import networks

# kNN monitor: k = 20 neighbours, T = 0.07 (monitors.knn_accuracy's defaults:
# the weighted kNN of Wu et al. 2018 with DINO's k = 20, Caron et al. 2021).
KNN_K = 20
KNN_TEMPERATURE = 0.07
SUBSET_SEED = 0  # fixed, so kNN numbers are comparable across steps/runs.


@functools.lru_cache(maxsize=8)
def _pmapped_encoder(
    model: ml_collections.FrozenConfigDict, devices: Optional[tuple]
):
  """encoder.encoder_apply on every device, cached: no recompiling."""
  config = ml_collections.ConfigDict(
      {'model': ml_collections.ConfigDict(model)}
  )
  return parallel.device_program(
      encoder_lib.encoder_apply(config), axis_name=None, devices=devices
  )


def subset_indices(n: int, max_examples: Optional[int]) -> np.ndarray:
  """Sorted indices of a fixed subset of range(n) (all: None, 0 or >= n)."""
  if max_examples is None or max_examples <= 0 or max_examples >= n:
    return np.arange(n)
  rng = np.random.default_rng(SUBSET_SEED)
  return np.sort(rng.choice(n, max_examples, replace=False))


def _limit(source, split: str, max_examples: Optional[int]):
  """(source, split, max_examples left to cut, indices) for about N examples.

  Folders are sorted by class, so the first N images would hold only a few
  classes: in memory and for folders a fixed random subset is read instead;
  TFDS files are shuffled when prepared, so reading stops after N.
  """
  if (
      max_examples is None
      or max_examples <= 0
      or max_examples >= source.num_examples(split)
  ):
    return source, split, None, None
  idx = subset_indices(source.num_examples(split), max_examples)
  if isinstance(source, sources.InMemorySource):
    return source, split, None, idx
  if isinstance(source, sources.FolderSource):
    raw = source.resolve_split(split)
    return (
        dataclasses.replace(
            source,
            files={**source.files, raw: source.files[raw][idx]},
            labels={**source.labels, raw: source.labels[raw][idx]},
        ),
        raw,
        None,
        None,
    )
  return source, split, max_examples, None


# Feature extraction runs the frozen encoder on about this many pixels per
# device per batch (4096 images at 32 px, 334 at 224 px): a split in a few
# large batches; inference keeps no activations for a backward pass.
FEATURE_PIXELS_PER_DEVICE = 2**24


def feature_batch_size(
    image_size: int, num_examples: int, local_devices: int, process_count: int
) -> int:
  """Images per feature batch over all hosts, no more than the split needs."""
  per_host = -(-num_examples // process_count)
  per_device = min(
      max(1, FEATURE_PIXELS_PER_DEVICE // image_size**2),
      -(-per_host // local_devices),
  )
  return max(1, per_device) * local_devices * process_count


def extract_features(
    config,
    source,
    params,
    state,
    *,
    split: str,
    max_examples: Optional[int] = None,
    devices=None
):
  """(features float32 [N, D], labels int32 [N]) of centre crops of a split.

  max_examples: a fixed random subset (in memory, folders), the first ones
  (TFDS). Multi-host: gathered from every host.
  """
  local = list(devices or jax.local_devices())
  source, split, max_examples, indices = _limit(source, split, max_examples)
  n = source.num_examples(split) if indices is None else len(indices)
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
  num_batches = pipeline.num_eval_batches(n, gb)
  if max_examples is not None:
    num_batches = min(num_batches, -(-max_examples // gb))
  fn = _pmapped_encoder(
      ml_collections.FrozenConfigDict(config.model),
      None if devices is None else tuple(local),
  )
  rparams = parallel.replicate(networks.restrict(params, ('encoder',)), local)
  rstate = parallel.replicate(networks.restrict(state, ('encoder',)), local)
  feats, labels, masks = [], [], []
  for _, batch in zip(
      range(num_batches), pipeline.prefetch_to_device(it, devices=local)
  ):
    out = fn(rparams, rstate, batch['image'])
    feats.append(np.asarray(out).reshape(-1, out.shape[-1]))
    labels.append(np.asarray(batch['label']).reshape(-1))
    masks.append(np.asarray(batch['mask']).reshape(-1))
  feats, labels, masks = (np.concatenate(x) for x in (feats, labels, masks))
  if jax.process_count() > 1:
    # Hosts arrive after unequal work (compiling, reading); see
    # hosts.barrier for why CPU hosts must meet before a collective.
    hosts.barrier('features extracted')
    feats, labels, masks = (
        np.asarray(multihost_utils.process_allgather(x, tiled=True))
        for x in (feats, labels, masks)
    )
  feats, labels = feats[masks], labels[masks]
  if max_examples is not None:
    feats, labels = feats[:max_examples], labels[:max_examples]
  return feats.astype(np.float32), labels.astype(np.int32)


def knn_top1(config, num_classes: int, train, test) -> float:
  """Weighted kNN top-1 of test features against (a subset of) train's."""
  feats, labels = train
  idx = subset_indices(len(labels), config.logging.knn_max_train_examples)
  return monitors.knn_accuracy(
      feats[idx],
      labels[idx],
      test[0],
      test[1],
      num_classes=num_classes,
      k=min(KNN_K, len(idx)),
      temperature=KNN_TEMPERATURE,
  )


def knn_eval(config, source, params, state, *, devices=None) -> float:
  """The kNN monitor: top-1 of eval.test_split against linear_train's subset.

  k = KNN_K, T = KNN_TEMPERATURE, centre crops (monitors.knn_accuracy).
  """
  train = extract_features(
      config,
      source,
      params,
      state,
      split='linear_train',
      max_examples=config.logging.knn_max_train_examples,
      devices=devices,
  )
  test = extract_features(
      config,
      source,
      params,
      state,
      split=config.eval.test_split,
      devices=devices,
  )
  return knn_top1(config, config.derived.num_classes, train, test)
