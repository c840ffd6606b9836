"""BYOL (Grill et al., 2020) as pure functions over online and target trees.

Online: encoder -> projector -> predictor, plus a linear classifier on the
stop-gradient representation of view 1 (the official code's accuracy monitor).
Target: encoder -> projector, its own tree, moved only by the EMA.

With BatchNorm each view is forwarded separately (per-view statistics, as the
official code); the target's BN state is updated by its own forward passes.
Without batch statistics both views go as one batch (same outputs).
"""

from typing import Optional

import jax
import jax.numpy as jnp

from byol_jax import losses
from byol_jax.methods import networks


def make_byol(model, num_classes: int,
              axis_name: Optional[str] = None) -> networks.Method:
  """BYOL's networks.Method for the `model` sub-config.

  Args:
    model: the `model` sub-config.
    num_classes: outputs of the online classifier.
    axis_name: collective axis for cross-replica BN, or None.

  Returns:
    A networks.Method; its target trees are the online ones restricted to
    networks.TARGET_MODULES.
  """
  online = networks.make_forward(model, num_classes, with_predictor=True,
                                 with_classifier=True, axis_name=axis_name)
  target = networks.make_forward(model, num_classes, with_predictor=False,
                                 with_classifier=False, axis_name=axis_name)

  online_one_batch = networks.views_in_one_batch(model, with_predictor=True)
  target_one_batch = networks.views_in_one_batch(model, with_predictor=False)

  def init(rng, images):
    params, state = online.init(rng, images, is_training=True)
    # BYOL initialises the target as a copy of the online network (§3.1).
    # A real copy: the state is donated, and aliased buffers cannot be.
    copy = lambda tree: jax.tree.map(jnp.copy, networks.restrict(tree))
    return params, state, copy(params), copy(state)

  def loss(online_params, online_state, target_params, target_state, views,
           labels):
    (out1, out2), online_state = networks.apply_views(
        online, online_params, online_state, views,
        one_batch=online_one_batch)
    # Target forward in training mode (batch statistics), as the official
    # code; byol_loss applies the stop-gradient on its outputs.
    (tgt1, tgt2), target_state = networks.apply_views(
        target, target_params, target_state, views,
        one_batch=target_one_batch)
    byol = losses.byol_loss(out1['prediction'], out2['prediction'],
                            tgt1['projection'], tgt2['projection'])
    classif, metrics = networks.classifier_and_monitors(out1, labels)
    metrics['loss'] = byol
    return byol + classif, (online_state, target_state,
                            jax.lax.stop_gradient(metrics))

  return networks.Method(init=init, loss=loss)
