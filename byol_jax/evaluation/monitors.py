"""The weighted kNN accuracy of frozen features (a training monitor)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import losses


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

  Wu et al. (2018, InstDisc, §3.4; k 200 there, 20 common on CIFAR): on
  L2-normalised features the k training points of highest cosine s_i vote
  sum_i exp(s_i / T) [y_i = c]; batch_size test points at a time.
  """
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
  batch = min(batch_size, m)
  correct = _knn_correct(*args, temperature, num_classes, k, batch)
  return int(correct) / m
