"""SimCLR (Chen et al., 2020), Table 1's baseline: no predictor, no target."""

from typing import Optional

from byol_jax import losses
from byol_jax.methods import networks


def make_simclr(
    model,
    num_classes: int,
    *,
    temperature: float,
    axis_name: Optional[str] = None,
) -> networks.Method:
  """SimCLR's networks.Method: no target (trees {}, nothing to update);
  temperature: InfoNCE's, > 0; axis_name: cross-replica BN's and the
  negatives'."""
  online = networks.make_forward(
      model,
      num_classes,
      with_predictor=False,
      with_classifier=True,
      axis_name=axis_name,
  )

  def init(rng, images):
    return *online.init(rng, images, is_training=True), {}, {}

  def loss(online_out, unused_target_out):
    z1, z2 = (out['projection'] for out in online_out)
    contrastive, info = losses.infonce_loss(
        z1, z2, temperature=temperature, axis_name=axis_name
    )
    return contrastive, {'contrastive_top1': info['contrastive_top1_acc']}

  return networks.Method(
      init=init,
      online=networks.forward_views(model, online, False),
      target=lambda params, state, views: (None, state),
      loss=loss,
      target_update=lambda target_params, online_params, tau: target_params,
  )
