"""The online classifier and monitors: unlabelled examples (label < 0)."""

import jax
import numpy as np

from byol_jax.methods import networks


def _outputs(n, seed=0):
  rng = np.random.default_rng(seed)
  return {
      'logits': rng.normal(0, 2, (n, 10)).astype(np.float32),
      'projection': rng.normal(0, 1, (n, 8)).astype(np.float32),
      'representation': rng.normal(0, 1, (n, 16)).astype(np.float32),
  }


def test_unlabelled_examples_leave_the_classifier_loss_and_accuracy():
  out = _outputs(12)
  labels = np.array([3, -1, 0, 9, -1, 2, 2, -1, 5, 1, 9, 0], np.int32)
  keep = labels >= 0
  loss, metrics = jax.jit(networks.classifier_and_monitors)(out, labels)
  ref_loss, ref_metrics = networks.classifier_and_monitors(
      {k: v[keep] for k, v in out.items()}, labels[keep]
  )
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  np.testing.assert_allclose(
      metrics['online_top1'], ref_metrics['online_top1'], rtol=1e-6
  )
  # -1 would have wrapped to class 9: changing the unlabelled examples'
  # logits for class 9 must change nothing.
  moved = dict(out, logits=out['logits'].copy())
  moved['logits'][~keep, 9] += 100.0
  loss2, metrics2 = networks.classifier_and_monitors(moved, labels)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  assert metrics2['online_top1'] == metrics['online_top1']
  # All unlabelled: zero loss and accuracy, not NaN.
  loss3, metrics3 = networks.classifier_and_monitors(
      out, -np.ones(12, np.int32)
  )
  assert float(loss3) == 0.0 and float(metrics3['online_top1']) == 0.0
