"""Tests for the kNN accuracy of byol_jax/evaluation/features.py."""

import numpy as np
import pytest

from byol_jax.evaluation import features


def _clusters(n_per_class, num_classes, dim, seed, spread=0.05):
  rng = np.random.RandomState(seed)
  centres = np.eye(num_classes, dim) * 5.0
  labels = np.repeat(np.arange(num_classes), n_per_class)
  feats = centres[labels] + spread * rng.randn(labels.size, dim)
  perm = rng.permutation(labels.size)
  return feats[perm].astype(np.float32), labels[perm]


def test_knn_separable_clusters_is_perfect():
  x_tr, y_tr = _clusters(50, 10, 16, seed=0)
  x_te, y_te = _clusters(20, 10, 16, seed=1)
  # batch_size 64 does not divide 200: exercises the padded last chunk.
  acc = features.knn_accuracy(
      x_tr, y_tr, x_te, y_te, num_classes=10, k=20, batch_size=64
  )
  assert acc == 1.0


def test_knn_shuffled_labels_is_near_chance():
  x_tr, y_tr = _clusters(200, 10, 16, seed=2)
  x_te, y_te = _clusters(100, 10, 16, seed=3)
  y_tr = np.random.RandomState(4).permutation(y_tr)
  acc = features.knn_accuracy(x_tr, y_tr, x_te, y_te, num_classes=10, k=20)
  # Chance is 0.1; 40 seeds (AMD EPYC): 0.095 +- 0.022 (0.067..0.171; the
  # test points of a cluster share neighbours, twice the binomial sd): both
  # bounds >= 4.3 sd; a kNN that reads the test labels gives 1.
  assert 0.0 < acc < 0.2, acc


def _knn_reference(x_tr, y_tr, x_te, y_te, num_classes, k, temperature):
  """Brute-force NumPy weighted kNN in float64."""
  x_tr = x_tr / np.linalg.norm(x_tr, axis=1, keepdims=True)
  x_te = x_te / np.linalg.norm(x_te, axis=1, keepdims=True)
  correct = 0
  for x, y in zip(x_te, y_te):
    sim = x_tr @ x
    nn = np.argsort(-sim)[:k]
    votes = np.zeros(num_classes)
    for i in nn:
      votes[y_tr[i]] += np.exp(sim[i] / temperature)
    correct += int(np.argmax(votes) == y)
  return correct / len(y_te)


@pytest.mark.parametrize('k,temperature', [(1, 0.07), (7, 0.07), (15, 0.5)])
def test_knn_matches_numpy_reference(k, temperature):
  rng = np.random.RandomState(k)
  x_tr = rng.randn(300, 12)
  y_tr = rng.randint(0, 5, 300)
  x_te = rng.randn(97, 12)
  y_te = rng.randint(0, 5, 97)
  want = _knn_reference(x_tr, y_tr, x_te, y_te, 5, k, temperature)
  got = features.knn_accuracy(
      x_tr,
      y_tr,
      x_te,
      y_te,
      num_classes=5,
      k=k,
      temperature=temperature,
      batch_size=32,
  )
  assert got == pytest.approx(want, abs=1e-9)
  # Random data: a non-trivial number of hits. 120 draws (40 seeds x 3 k,
  # AMD EPYC): 0.20 +- 0.041 (0.07..0.31): 4.4 and 7 sd.
  assert 0.02 < want < 0.5


def test_knn_rejects_k_larger_than_train_set():
  x = np.ones((4, 3), np.float32)
  with pytest.raises(ValueError, match='k=5'):
    features.knn_accuracy(x, np.zeros(4), x, np.zeros(4), num_classes=2, k=5)
