"""BN-free "modified initialisation" (paper §3.2).

One forward pass of the network *with* BatchNorm, in training mode, on a batch
of augmented images gives the per-channel mean and std of the input of every
BN layer. BN is then removed and replaced by a trainable per-channel affine
layer initialised so that, on that batch, the network computes exactly what
the BN network computed:

    gamma = gamma0 / std,   beta = -mean * gamma,   std = sqrt(var + eps),

with gamma0 = 0 for the last norm of each residual block and 1 otherwise (the
BN network's own initial scale: zero_init_last) and BN's initial offset 0.
After this the network has no layer that computes statistics.

Every component whose norm kind is 'affine' (encoder, projector, predictor) is
calibrated; in this codebase BN and affine layers have identical parameter
trees ([C] `scale` and `offset` under the same module path), so the affine
network's parameters run unchanged through a BN twin of it.
"""

import haiku as hk
import jax
import jax.numpy as jnp

from byol_jax.methods import networks
from byol_jax.models import layers

COMPONENTS = ('encoder', 'projector', 'predictor')


def calibrated_components(model) -> tuple:
  return tuple(c for c in COMPONENTS if model[f'{c}_norm'] == 'affine')


def bn_twin(model):
  """The model with BN (decay 0, per-device statistics) where it has affine.

  With decay 0 the BN state after one training-mode forward pass holds
  exactly that batch's mean and variance.
  """
  twin = model.copy_and_resolve_references()
  for component in calibrated_components(model):
    twin[f'{component}_norm'] = 'bn'
  twin.bn_decay = 0.
  twin.cross_replica_bn = False
  return twin


def calibrate(model, num_classes: int, params: hk.Params,
              images: jax.Array, *, with_predictor: bool = True) -> hk.Params:
  """Returns `params` with every affine layer set from batch statistics.

  Args:
    model: the `model` config (some components with norm 'affine').
    num_classes: classifier outputs (only to build the same tree).
    params: the affine network's initial online parameters.
    images: [B, H, W, 3] a batch of augmented, normalised images.
    with_predictor: whether the online network has a predictor (BYOL).

  Returns:
    New params: affine scale = gamma0 / std, offset = -mean * scale (+ the
    initial offset, 0) at each calibrated layer; all other leaves unchanged.
  """
  components = calibrated_components(model)
  if not components:
    raise ValueError('modified init needs at least one component with norm '
                     "'affine' (model.encoder_norm=affine, paper §3.2).")
  twin = bn_twin(model)
  forward = networks.make_forward(twin, num_classes,
                                  with_predictor=with_predictor,
                                  with_classifier=False, axis_name=None)

  @jax.jit
  def batch_stats(params, images):
    _, state = forward.init(jax.random.PRNGKey(0), images, True)
    _, stats = forward.apply(params, state, None, images, True)
    return stats

  stats = batch_stats(params, images)
  eps = layers.BN_EPS  # the BN twin's eps.
  new = dict(params)
  for path, s in stats.items():
    if path.split('/')[0] not in components:
      continue
    p = params[path]
    scale = p['scale'] * jax.lax.rsqrt(s['var'] + eps)  # gamma0 / std
    new[path] = {'scale': scale, 'offset': p['offset'] - s['mean'] * scale}
  return new


def reference_outputs(model, num_classes, init_params, images,
                      with_predictor=True):
  """The BN network's training-mode outputs on `images` (for checks)."""
  forward = networks.make_forward(bn_twin(model), num_classes,
                                  with_predictor=with_predictor,
                                  with_classifier=False, axis_name=None)
  _, state = forward.init(jax.random.PRNGKey(0), images, True)
  out, _ = forward.apply(init_params, state, None, images, True)
  return out


def apply_to_state(train_state, model, num_classes, images, with_predictor):
  """Calibrates a fresh TrainState's online params; target = copy of them."""
  params = calibrate(model, num_classes, train_state.online_params, images,
                     with_predictor=with_predictor)
  target = jax.tree.map(jnp.copy, networks.restrict(params))
  return train_state._replace(
      online_params=params,
      target_params=target if train_state.target_params else {})
