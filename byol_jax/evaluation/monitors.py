"""The weighted kNN accuracy of frozen features (a training monitor)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import losses
from byol_jax import metrics


def _l2_normalize(x: jnp.ndarray) -> jnp.ndarray:
  return losses.l2_normalize(jnp.asarray(x, jnp.float32))


@functools.partial(jax.jit, static_argnames=('num_classes', 'k'))
def _knn_chunk_correct(
    train_n,
    train_labels,
    test_chunk,
    test_labels,
    valid,
    *,
    num_classes,
    k,
    temperature,
):
  """Number of correct weighted-kNN predictions in one chunk of test points."""
  # HIGHEST: the default TPU matmul precision (bf16) reorders near neighbours.
  sim = jnp.dot(
      _l2_normalize(test_chunk), train_n.T, precision=jax.lax.Precision.HIGHEST
  )  # [B, N_train]
  top_sim, top_idx = jax.lax.top_k(sim, k)  # [B, k]
  weights = jnp.exp(top_sim / temperature)
  votes = jnp.sum(
      jax.nn.one_hot(train_labels[top_idx], num_classes) * weights[..., None],
      axis=1,
  )  # [B, C]
  correct = (jnp.argmax(votes, -1) == test_labels) & valid
  return jnp.sum(correct.astype(jnp.int32))


def knn_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 256,
) -> float:
  """Top-1 in [0, 1] of a weighted k-nearest-neighbour classifier.

  Wu et al. (2018, InstDisc, §3.4), the public BYOL / SimSiam CIFAR codebases'
  monitor: on L2-normalised features each test point takes the k training
  points of highest cosine similarity s_i, and class c gets the vote
  sum_i exp(s_i / T) [y_i = c]. Test points go batch_size at a time (the last
  chunk padded: one compilation), so only a [batch_size, N_train] similarity
  block is held. k: InstDisc's default is 200, 20 common on CIFAR-sized sets.
  ValueError for malformed features or labels, or arguments out of range.
  """
  metrics.check_embeddings('train_features', train_features)
  metrics.check_embeddings('test_features', test_features)
  n_train, dim = np.shape(train_features)
  n_test = np.shape(test_features)[0]
  if np.shape(test_features)[1] != dim:
    raise ValueError(
        f'test_features has dim {np.shape(test_features)[1]} but '
        f'train_features has dim {dim}; use the same encoder.'
    )
  if np.shape(train_labels) != (n_train,) or np.shape(test_labels) != (n_test,):
    raise ValueError(
        f'labels must be [N]: train_labels {np.shape(train_labels)} for '
        f'{n_train} train features, test_labels {np.shape(test_labels)} for '
        f'{n_test} test features.'
    )
  if not 1 <= k <= n_train:
    raise ValueError(f'k={k} must be in [1, {n_train}] (the train set size).')
  if temperature <= 0:
    raise ValueError(f'temperature={temperature} must be > 0.')
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be >= 1.')
  train_n = _l2_normalize(train_features)
  train_labels = jnp.asarray(train_labels, jnp.int32)
  test_features = np.asarray(test_features, np.float32)
  test_labels = np.asarray(test_labels, np.int32)
  batch_size = min(batch_size, n_test)
  correct = 0
  for start in range(0, n_test, batch_size):
    chunk = test_features[start : start + batch_size]
    labels = test_labels[start : start + batch_size]
    n = chunk.shape[0]
    pad = batch_size - n  # Fixed chunk shape: one compilation.
    valid = np.arange(batch_size) < n
    correct += int(
        _knn_chunk_correct(
            train_n,
            train_labels,
            np.pad(chunk, ((0, pad), (0, 0))),
            np.pad(labels, (0, pad)),
            valid,
            num_classes=num_classes,
            k=k,
            temperature=temperature,
        )
    )
  return correct / n_test
