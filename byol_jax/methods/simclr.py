"""SimCLR (Chen et al., 2020), the contrastive baseline of the paper's Table 1.

BYOL's encoder, projector, norms and online classifier; no predictor, no
target network; negatives span the global batch (InfoNCE all-gathers).
"""

from typing import Optional

import jax

from byol_jax import losses
from byol_jax.methods import networks


def make_simclr(model, num_classes: int, *, temperature: float,
                axis_name: Optional[str] = None) -> networks.Method:
  """SimCLR's networks.Method (target trees {}).

  Args:
    model: the `model` sub-config.
    num_classes: outputs of the online classifier.
    temperature: InfoNCE temperature, > 0.
    axis_name: collective axis for cross-replica BN and cross-device
      negatives, or None.
  """
  online = networks.make_forward(model, num_classes, with_predictor=False,
                                 with_classifier=True, axis_name=axis_name)

  # Both views in one forward when no norm uses batch statistics (same
  # outputs, one pass); with BN one pass per view.
  one_batch = networks.views_in_one_batch(model, with_predictor=False)

  def init(rng, images):
    params, state = online.init(rng, images, is_training=True)
    return params, state, {}, {}

  def loss(online_params, online_state, target_params, target_state, views,
           labels):
    (out1, out2), online_state = networks.apply_views(
        online, online_params, online_state, views, one_batch=one_batch)
    contrastive, info = losses.infonce_loss(
        out1['projection'], out2['projection'], temperature=temperature,
        axis_name=axis_name)
    classif, metrics = networks.classifier_and_monitors(out1, labels)
    metrics.update(loss=contrastive,
                   contrastive_top1=info['contrastive_top1_acc'])
    return contrastive + classif, (online_state, target_state,
                                   jax.lax.stop_gradient(metrics))

  return networks.Method(init=init, loss=loss)
