"""BYOL (Grill et al., 2020): the predictor and a target network (encoder ->
projector) moved by the EMA (eq. 1), on top of the shared step."""

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from byol_jax import losses
from byol_jax.methods import networks


def ema(target_params, online_params, tau):
  """target <- tau * target + (1 - tau) * online (BYOL eq. 1), per module.

  online_params: after this step's update; tau in [0, 1] (schedules.target_ema).
  """
  online = {name: online_params[name] for name in target_params}
  return jax.tree.map(
      lambda t, o: tau * t + (1.0 - tau) * o, target_params, online
  )


def make_byol(
    model, num_classes: int, axis_name: Optional[str] = None
) -> networks.Method:
  """BYOL's networks.Method for the `model` sub-config: target = online
  restricted to TARGET_MODULES, loss losses.byol_loss, target update `ema`;
  num_classes: the online classifier's; axis_name: cross-replica BN's."""
  forward = functools.partial(
      networks.make_forward, model, num_classes, axis_name=axis_name
  )
  online = forward(with_predictor=True, with_classifier=True)
  target = forward(with_predictor=False, with_classifier=False)

  def init(rng, images):
    params, state = online.init(rng, images, is_training=True)
    # The target starts as a copy of the online network (§3.1); a real copy:
    # the state is donated, and aliased buffers cannot be.
    copy = lambda tree: jax.tree.map(jnp.copy, networks.restrict(tree))
    return params, state, copy(params), copy(state)

  def loss(online_out, target_out):
    p1, p2 = (out['prediction'] for out in online_out)
    z1, z2 = (out['projection'] for out in target_out)
    return losses.byol_loss(p1, p2, z1, z2), {}

  return networks.Method(
      init=init,
      online=networks.forward_views(model, online, True),
      target=networks.forward_views(model, target, False),
      loss=loss,
      target_update=ema,
  )
