"""The weighted kNN accuracy of frozen features (a training monitor)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import losses
from byol_jax import metrics


@functools.partial(jax.jit, static_argnums=(5, 6, 7))
def _knn_correct(train, labels, test, test_labels, t, num_classes, k, batch):
  """Number of test points whose weighted-kNN vote is their label."""
  train = losses.l2_normalize(train)

  def one(xy):
    # HIGHEST: the default TPU matmul precision (bf16) reorders near neighbours.
    sim = jnp.dot(train, xy[0], precision=jax.lax.Precision.HIGHEST)
    top_sim, top_idx = jax.lax.top_k(sim, k)
    weights = jnp.exp(top_sim / t)[:, None]
    votes = jnp.sum(jax.nn.one_hot(labels[top_idx], num_classes) * weights, 0)
    return jnp.argmax(votes) == xy[1]

  test = losses.l2_normalize(test)
  return jnp.sum(jax.lax.map(one, (test, test_labels), batch_size=batch))


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
  monitor: on L2-normalised features each test point takes the k training points
  of highest cosine similarity s_i; class c gets the vote sum_i exp(s_i / T)
  [y_i = c]. batch_size test points at a time (a [batch_size, N_train] block).
  k: InstDisc's default is 200, 20 common on CIFAR-sized sets.
  """
  metrics.check_embeddings('train_features', train_features)
  metrics.check_embeddings('test_features', test_features)
  args = (train_features, train_labels, test_features, test_labels)
  shapes = [np.shape(x) for x in args]
  (n_train, dim), (n_test, _) = shapes[0], shapes[2]
  if shapes[1:] != [(n_train,), (n_test, dim), (n_test,)]:
    raise ValueError(
        'need features [N, D] of one D and labels [N] (train features, '
        f'labels, test features, labels); got shapes {shapes}.'
    )
  if not 1 <= k <= n_train:
    raise ValueError(f'k={k} must be in [1, {n_train}] (the train set size).')
  if temperature <= 0 or batch_size < 1:
    raise ValueError(
        f'temperature={temperature} must be > 0, batch_size={batch_size} >= 1.'
    )
  batch = min(batch_size, n_test)
  correct = _knn_correct(*args, temperature, num_classes, k, batch)
  return int(correct) / n_test
