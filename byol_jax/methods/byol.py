"""BYOL (Grill et al., 2020): what it adds to the shared step (experiment.py).

Online: encoder -> projector -> predictor, plus a linear classifier on the
stop-gradient representation of view 1 (the official code's accuracy monitor).
Target: encoder -> projector, its own tree, moved only by the EMA (eq. 1).
"""

from typing import Optional

import jax
import jax.numpy as jnp

from byol_jax import losses
from byol_jax.methods import networks


def ema(target_params, online_params, tau):
  """target <- tau * target + (1 - tau) * online (BYOL eq. 1), per module.

  online_params: after this step's update; tau in [0, 1] (schedules.target_ema).
  """
  return {
      name: jax.tree.map(
          lambda t, o: tau * t + (1.0 - tau) * o, module, online_params[name]
      )
      for name, module in target_params.items()
  }


def make_byol(
    model, num_classes: int, axis_name: Optional[str] = None
) -> networks.Method:
  """BYOL's networks.Method for the `model` sub-config.

  Args:
    model: the `model` sub-config.
    num_classes: outputs of the online classifier.
    axis_name: collective axis for cross-replica BN, or None.

  Returns:
    A networks.Method; its target trees are the online ones restricted to
    networks.TARGET_MODULES, its loss losses.byol_loss of the online
    predictions and the target projections, its target update `ema`.
  """
  online = networks.make_forward(
      model,
      num_classes,
      with_predictor=True,
      with_classifier=True,
      axis_name=axis_name,
  )
  target = networks.make_forward(
      model,
      num_classes,
      with_predictor=False,
      with_classifier=False,
      axis_name=axis_name,
  )

  def init(rng, images):
    params, state = online.init(rng, images, is_training=True)
    # BYOL initialises the target as a copy of the online network (§3.1).
    # A real copy: the state is donated, and aliased buffers cannot be.
    copy = lambda tree: jax.tree.map(jnp.copy, networks.restrict(tree))
    return params, state, copy(params), copy(state)

  def loss(online_out, target_out):
    (out1, out2), (tgt1, tgt2) = online_out, target_out
    return (
        losses.byol_loss(
            out1['prediction'],
            out2['prediction'],
            tgt1['projection'],
            tgt2['projection'],
        ),
        {},
    )

  return networks.Method(
      init=init,
      online=networks.forward_views(model, online, True),
      target=networks.forward_views(model, target, False),
      loss=loss,
      target_update=ema,
  )
