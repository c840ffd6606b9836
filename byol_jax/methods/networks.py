"""The networks a method trains, built from the `model` sub-config.

One Haiku function builds encoder -> projector [-> predictor] [+ classifier];
the online and target networks are two transforms of it, so their parameter
trees share module paths ('encoder/...', 'projector/...') and the target tree
is exactly the online tree restricted to those two components.

The `model` config fields (configs.model_config):
  depth, width_multiplier, stem, zero_init_last, dtype ('float32'|'bfloat16'),
  encoder_norm, projector_norm, predictor_norm (each in norms.NORM_KINDS),
  gn_groups, encoder_ws, heads_ws, cross_replica_bn, bn_decay,
  projector_hidden_size, projector_output_size, predictor_hidden_size.
"""

from typing import Any, Callable, NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import losses
from byol_jax import metrics as metrics_lib
from byol_jax.models import heads
from byol_jax.models import norms
from byol_jax.models import resnet

TARGET_MODULES = ('encoder', 'projector')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


# The fewest hidden units per group a GroupNorm (or LayerNorm: one group)
# head may have. Measured on gn_ws:tiny (16 groups), 30 steps, logged every 5:
# with 1 unit per group (hidden 16) GroupNorm normalises each unit by itself,
# x - mean(x) = 0, so every output is the norm's offset (0 at init), the head
# outputs 0 and no gradient passes it: loss and collapse statistic 0.000 at
# every step (both heads at 16; the predictor alone: loss 2.000 at every
# step, the projection statistic steady at 0.91). With 2 per group (hidden
# 32) each group's output is +-1, its sign alone: collapse statistic 0.86 at
# step 5, 0.0055 at step 15, 0.000 from step 20. With 4 per group (hidden
# 64): 0.93 at step 5, 0.107 at step 30, not collapsed. The tiny preset's 8
# (128 / 16) learns (0.30 -> 0.52).
HEAD_MIN_PER_GROUP = 4


def validate_model_config(model) -> None:
  """Checks the `model` sub-config's fields that shape the networks.

  Args:
    model: the `model` sub-config.

  Raises:
    ValueError: naming the first bad `model.*` field: depth, stem, a norm
      kind, dtype, a width multiplier giving a fractional or zero channel
      count, gn_groups not dividing a layer's channels, or a GroupNorm /
      LayerNorm head with fewer than HEAD_MIN_PER_GROUP units per group, or
      projections of one dimension.
  """
  resnet.check_depth(model.depth, 'model.depth')
  if model.stem not in resnet.STEMS:
    raise ValueError(f'model.stem={model.stem!r} is not a stem; use one of '
                     f'{", ".join(resnet.STEMS)}.')
  for component in ('encoder', 'projector', 'predictor'):
    norms.check_norm_kind(model[f'{component}_norm'],
                          f'model.{component}_norm')
  if model.dtype not in _DTYPES:
    raise ValueError(f'model.dtype={model.dtype!r}; use float32 or bfloat16.')
  w, groups = model.width_multiplier, model.gn_groups
  channels = resnet.norm_channels(model.depth, w)
  for where, c in channels.items():
    if c != int(c) or c < 1:
      raise ValueError(
          f'model.width_multiplier={w} gives {c:g} channels in {where}, not a '
          'whole number >= 1; use a multiplier m whose 64 x m is a whole '
          'number (e.g. 0.25, 0.5, 1, 2).')
    if model.encoder_norm == 'gn' and c % groups:
      raise ValueError(
          f'model.width_multiplier={w} gives {c:g} channels in {where}, not '
          f'divisible by the {groups} GroupNorm groups (model.gn_groups='
          f'{groups}); use a model.gn_groups that divides {c:g}, or a '
          f'multiplier m whose 64 x m is a multiple of {groups} (e.g. '
          f'{groups / 64:g}).')
  if model.projector_output_size < 2:
    # Measured, 30 steps: gn_ws:tiny's loss 2.000 at every step; byol_bn:tiny's
    # 2.5-5.4, moved by the batch statistics alone.
    raise ValueError(
        f'model.projector_output_size={model.projector_output_size}: the '
        'losses compare l2-normalised outputs, and one of 1 dimension is its '
        'sign, whose gradient is 0 (nothing trains); use at least 2 (the '
        'paper: 256).')
  for head in ('projector', 'predictor'):
    kind, field = model[f'{head}_norm'], f'model.{head}_hidden_size'
    if kind not in ('gn', 'ln'):
      continue
    hidden, g = model[f'{head}_hidden_size'], groups if kind == 'gn' else 1
    name = (f'{g} GroupNorm groups (model.gn_groups={g})' if kind == 'gn'
            else 'LayerNorm')
    if hidden % g:
      raise ValueError(f'{field}={hidden} is not divisible by the {name} of '
                       f'the {head}; use a multiple of {g}.')
    if hidden // g < HEAD_MIN_PER_GROUP:
      raise ValueError(
          f'{field}={hidden} gives the {head}\'s {name} {hidden // g} unit(s) '
          'per group, too few to learn: a group of 1 is normalised to 0 (the '
          'head outputs 0 and nothing trains: a constant loss, measured 0.000 '
          'or 2.000), of 2 to its sign (collapse within 20 steps); use at '
          'least '
          f'{HEAD_MIN_PER_GROUP * g} ({HEAD_MIN_PER_GROUP} per group).')


def norm_spec(model, component: str,
              axis_name: Optional[str]) -> norms.NormSpec:
  """The norm of one component, as the `model` config describes it.

  Args:
    model: the `model` sub-config.
    component: 'encoder', 'projector' or 'predictor'.
    axis_name: the collective axis for cross-replica BN (used when
      model.cross_replica_bn), or None.

  Returns:
    A norms.NormSpec.
  """
  return norms.NormSpec(
      kind=model[f'{component}_norm'], groups=model.gn_groups,
      axis_name=axis_name if model.cross_replica_bn else None,
      decay=model.get('bn_decay', norms.BN_DECAY))


def make_encoder(model, axis_name: Optional[str] = None) -> resnet.ResNet:
  """The encoder module ('encoder') described by the `model` config.

  Call inside a Haiku transform; used by make_forward and by encoder.py, so
  the two always build the same network with the same parameter paths.

  Args:
    model: the `model` sub-config.
    axis_name: the collective axis for cross-replica BN, or None.

  Returns:
    A resnet.ResNet module named 'encoder': images [N, H, W, 3] ->
    representations [N, D].
  """
  return resnet.ResNet(
      model.depth, model.width_multiplier, model.stem,
      norm_spec(model, 'encoder', axis_name), model.encoder_ws,
      model.zero_init_last, _DTYPES[model.dtype], name='encoder')


def make_forward(model, num_classes: int, *, with_predictor: bool,
                 with_classifier: bool, axis_name: Optional[str] = None
                 ) -> hk.TransformedWithState:
  """Transformed network: images -> dict of representation/projection/...

  Args:
    model: the `model` sub-config.
    num_classes: classifier outputs (online classifier / linear probe).
    with_predictor: add the BYOL predictor (online network only).
    with_classifier: add a linear classifier on the stop-gradient
      representation (the official code's online accuracy monitor).
    axis_name: collective axis for cross-replica BN (None outside pmap).

  Returns:
    hk.TransformedWithState of f(images, is_training) -> dict with
    'representation', 'projection' and optionally 'prediction', 'logits'.
  """
  dtype = _DTYPES[model.dtype]

  def forward(images, is_training):
    out = {}
    out['representation'] = make_encoder(model, axis_name)(images, is_training)
    out['projection'] = heads.MLP(
        model.projector_hidden_size, model.projector_output_size,
        norm_spec(model, 'projector', axis_name), model.heads_ws, dtype,
        name='projector')(out['representation'], is_training)
    if with_predictor:
      out['prediction'] = heads.MLP(
          model.predictor_hidden_size, model.projector_output_size,
          norm_spec(model, 'predictor', axis_name), model.heads_ws, dtype,
          name='predictor')(out['projection'], is_training)
    if with_classifier:
      out['logits'] = heads.LinearClassifier(num_classes)(
          jax.lax.stop_gradient(out['representation']))
    return out

  return hk.transform_with_state(forward)


BATCH_INDEPENDENT_NORMS = frozenset(('gn', 'ln', 'none', 'affine'))


def views_in_one_batch(model, *, with_predictor: bool) -> bool:
  """Whether the two views may be forwarded as one batch, with equal results.

  True when no norm of the network (encoder, projector and, with the
  predictor, the predictor) uses batch statistics: each example's output
  then depends on that example alone, so forwarding [view1; view2] once
  computes exactly the per-view outputs (one pass of twice the batch is
  cheaper: half the kernel launches, larger matmuls). BatchNorm anywhere
  keeps the per-view passes: their per-view batch statistics are part of
  the official BYOL code's behaviour (byol/byol_experiment.py forwards each
  view separately).

  Args:
    model: the `model` sub-config.
    with_predictor: whether the network includes the predictor.

  Returns:
    True for one concatenated forward, False for one forward per view.
  """
  components = ('encoder', 'projector') + (('predictor',) if with_predictor
                                           else ())
  return all(norms.check_norm_kind(model[f'{c}_norm']) in
             BATCH_INDEPENDENT_NORMS for c in components)


def apply_views(transformed: hk.TransformedWithState, params, state, views,
                *, one_batch: bool = False):
  """Forwards the views (training mode), threading the state.

  Args:
    transformed: from make_forward.
    params, state: the network's Haiku parameters and state.
    views: sequence of [B, H, W, C] image batches (the augmented views).
    one_batch: concatenate the views along the batch and forward them in one
      pass (only valid when views_in_one_batch: no batch statistics).
      Otherwise each view is forwarded separately, which gives per-view BN
      statistics, as the official BYOL code; the BN state is threaded view 1
      -> view 2.

  Returns:
    (list of output dicts, one per view, each with [B, ...] arrays; the state
    after the last pass).
  """
  if one_batch:
    sizes = [v.shape[0] for v in views]
    out, state = transformed.apply(params, state, None,
                                   jnp.concatenate(views), is_training=True)
    bounds = np.cumsum(sizes)[:-1].tolist()
    parts = {k: jnp.split(v, bounds) for k, v in out.items()}
    return [{k: p[i] for k, p in parts.items()} for i in range(len(views))
            ], state
  outputs = []
  for view in views:
    out, state = transformed.apply(params, state, None, view, is_training=True)
    outputs.append(out)
  return outputs, state


def restrict(tree, modules=TARGET_MODULES) -> dict:
  """The part of a Haiku params/state tree under the given top-level modules.

  Args:
    tree: a Haiku tree {module path: {name: array}} (params or state).
    modules: top-level module names ('encoder', 'projector', ...): a module
      path is kept when its first component is one of them.

  Returns:
    A new dict of the kept modules (the arrays themselves are not copied).
  """
  return hk.data_structures.filter(
      lambda module, name, value: module.split('/')[0] in modules, tree)


def classifier_and_monitors(out: dict, labels: jax.Array):
  """The online classifier's loss and the collapse monitors of one view.

  Args:
    out: make_forward outputs for a view (needs 'logits', 'projection',
      'representation').
    labels: [B] integer labels; a label < 0 marks an unlabelled example
      (e.g. STL-10's unlabelled split), left out of the classifier's loss
      and accuracy (rather than wrapping to the last class).

  Returns:
    (classifier loss, metrics dict). The classifier sees the stop-gradient
    representation, so adding its loss leaves the encoder's gradient unchanged.
  """
  labelled = labels >= 0
  classif = losses.softmax_cross_entropy(out['logits'], labels, labelled)
  metrics = {
      'classif_loss': classif,
      'online_top1': losses.masked_mean(
          losses.topk_correct(out['logits'], labels, 1), labelled),
      # Collapse statistic: per-dimension std of L2-normalised vectors times
      # sqrt(dim); about 1 when spread out, 0 when collapsed (paper Table 2).
      'collapse_std_projection': metrics_lib.collapse_std(out['projection']),
      'collapse_std_representation': metrics_lib.collapse_std(
          out['representation']),
  }
  return classif, metrics


class Method(NamedTuple):
  """A self-supervised method as two pure functions.

  Attributes:
    init: init(rng, images [B, H, W, 3]) -> (online_params, online_state,
      target_params, target_state); the target trees are {} for methods
      without a target network.
    loss: loss(online_params, online_state, target_params, target_state,
      views, labels) -> (loss, (online_state, target_state, metrics)), where
      views is (view1, view2) of augmented images [B, H, W, 3] and labels
      [B] int; differentiate with respect to online_params.
  """
  init: Callable[..., Any]
  loss: Callable[..., Any]
