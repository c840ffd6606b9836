"""The networks a method trains, from the `model` sub-config: encoder ->
projector [-> predictor] [+ classifier] in one Haiku function (the target tree
is the online tree restricted to TARGET_MODULES)."""

from typing import Any, Callable, NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp

from byol_jax import losses
from byol_jax.models import heads
from byol_jax.models import norms
from byol_jax.models import resnet

TARGET_MODULES = ('encoder', 'projector')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# The fewest hidden units per group of a GroupNorm (or LayerNorm) head,
# measured on gn_ws:tiny (16 groups), 30 steps: 1 normalises each unit to 0
# (loss and collapse statistic 0.000 at every step), 2 keep only its sign
# (collapse statistic 0.000 from step 20), 4: 0.107 at step 30; 8 (tiny) learns.
HEAD_MIN_PER_GROUP = 4


def validate_model_config(model) -> None:
  """ValueError naming the first bad `model.*` field that shapes the networks
  (also: channels GN groups do not divide, GN/LN heads < HEAD_MIN_PER_GROUP
  units per group, 1-d projections)."""
  resnet.check_depth(model.depth, 'model.depth')
  resnet.check_stem(model.stem, 'model.stem')
  for component in ('encoder', 'projector', 'predictor'):
    norms.check_norm_kind(model[f'{component}_norm'], f'model.{component}_norm')
  if model.dtype not in _DTYPES:
    raise ValueError(f'model.dtype={model.dtype!r}; use float32 or bfloat16.')
  w, groups = model.width_multiplier, model.gn_groups
  for where, c in resnet.norm_channels(model.depth, w).items():
    gives = f'model.width_multiplier={w} gives {c:g} channels in {where}, not'
    if c != int(c) or c < 1:
      raise ValueError(
          f'{gives} a whole number >= 1; use a multiplier m whose 64 x m is a '
          'whole number (e.g. 0.25, 0.5, 1, 2).'
      )
    if model.encoder_norm == 'gn' and c % groups:
      raise ValueError(
          f'{gives} divisible by the {groups} GroupNorm groups (model.'
          f'gn_groups={groups}); use a model.gn_groups that divides {c:g}, or '
          f'a multiplier m whose 64 x m is a multiple of {groups} (e.g. '
          f'{groups / 64:g}).'
      )
  if model.projector_output_size < 2:
    # Measured, 30 steps: gn_ws:tiny's loss 2.000 at every step; byol_bn:tiny's
    # 2.5-5.4, moved by the batch statistics alone.
    raise ValueError(
        f'model.projector_output_size={model.projector_output_size}: the '
        'losses compare l2-normalised outputs, and one of 1 dimension is its '
        'sign (gradient 0: nothing trains); use at least 2 (paper: 256).'
    )
  for head in ('projector', 'predictor'):
    kind, field = model[f'{head}_norm'], f'model.{head}_hidden_size'
    hidden, g = model[f'{head}_hidden_size'], groups if kind == 'gn' else 1
    name = f'{g} GroupNorm groups (model.gn_groups={g})'
    name = name if kind == 'gn' else 'LayerNorm'
    grouped = kind in ('gn', 'ln')
    if grouped and hidden % g:
      raise ValueError(
          f'{field}={hidden} is not divisible by the {name} of the {head}; '
          f'use a multiple of {g}.'
      )
    if grouped and hidden // g < HEAD_MIN_PER_GROUP:
      raise ValueError(
          f"{field}={hidden} gives the {head}'s {name} {hidden // g} unit(s) "
          'per group, too few to learn (measured: 1 outputs 0, 2 collapse '
          f'within 20 steps); use at least {HEAD_MIN_PER_GROUP * g} '
          f'({HEAD_MIN_PER_GROUP} per group).'
      )


def norm_spec(
    model, component: str, axis_name: Optional[str]
) -> norms.NormSpec:
  """The norms.NormSpec of 'encoder', 'projector' or 'predictor'."""
  return norms.NormSpec(
      kind=model[f'{component}_norm'],
      groups=model.gn_groups,
      axis_name=axis_name if model.cross_replica_bn else None,
      decay=model.get('bn_decay', norms.BN_DECAY),
  )


def make_encoder(model, axis_name: Optional[str] = None) -> resnet.ResNet:
  """The 'encoder' ResNet [N, H, W, 3] -> [N, D] (make_forward, encoder.py)."""
  return resnet.ResNet(
      model.depth,
      model.width_multiplier,
      model.stem,
      norm_spec(model, 'encoder', axis_name),
      model.encoder_ws,
      model.zero_init_last,
      _DTYPES[model.dtype],
      name='encoder',
  )


def make_forward(
    model,
    num_classes: int,
    *,
    with_predictor: bool,
    with_classifier: bool,
    axis_name: Optional[str] = None,
) -> hk.TransformedWithState:
  """f(images, is_training) -> {'representation', 'projection', ...} with state.

  Args:
    model: the `model` sub-config.
    num_classes: outputs of the classifier.
    with_predictor: add the BYOL predictor ('prediction').
    with_classifier: add the official online accuracy monitor ('logits'), a
      linear classifier on the stop-gradient representation.
    axis_name: collective axis for cross-replica BN (None outside pmap).

  Returns:
    hk.TransformedWithState of images [N, H, W, 3]; outputs [N, ...] float32.
  """

  def mlp(head, x, is_training):
    return heads.MLP(
        model[f'{head}_hidden_size'],
        model.projector_output_size,
        norm_spec(model, head, axis_name),
        model.heads_ws,
        _DTYPES[model.dtype],
        name=head,
    )(x, is_training)

  def forward(images, is_training):
    h = make_encoder(model, axis_name)(images, is_training)
    out = {'representation': h, 'projection': mlp('projector', h, is_training)}
    if with_predictor:
      out['prediction'] = mlp('predictor', out['projection'], is_training)
    if with_classifier:
      classifier = heads.LinearClassifier(num_classes)
      out['logits'] = classifier(jax.lax.stop_gradient(h))
    return out

  return hk.transform_with_state(forward)


def views_in_one_batch(model, *, with_predictor: bool) -> bool:
  """Whether no norm uses batch statistics: one pass of [view1; view2] is then
  exact, with half the launches (BN: a pass per view, as the official code)."""
  components = ['encoder', 'projector'] + ['predictor'] * with_predictor
  return all(model[f'{c}_norm'] != 'bn' for c in components)


def forward_views(
    model, transformed: hk.TransformedWithState, with_predictor: bool
):
  """fn(params, state, views) -> ([output dict per view], state), training mode:
  one pass of the concatenated views when views_in_one_batch, else one pass
  per view, BN state threaded view 1 -> view 2."""
  one_batch = views_in_one_batch(model, with_predictor=with_predictor)
  apply = lambda p, s, x: transformed.apply(p, s, None, x, is_training=True)

  def forward(params, state, views):
    if one_batch:
      out, state = apply(params, state, jnp.concatenate(views))
      n = views[0].shape[0]
      part = lambda i: jax.tree.map(lambda v: v[i * n : (i + 1) * n], out)
      return [part(i) for i in range(len(views))], state
    outputs = []
    for view in views:
      out, state = apply(params, state, view)
      outputs.append(out)
    return outputs, state

  return forward


def restrict(tree, modules=TARGET_MODULES) -> dict:
  """The part of a Haiku tree under the given top-level modules (not copied)."""
  return hk.data_structures.filter(
      lambda module, name, value: module.split('/')[0] in modules, tree
  )


def classifier_and_monitors(out: dict, labels: jax.Array):
  """(classifier loss, metrics) of one view's outputs and [B] int labels (< 0:
  unlabelled, not counted), with the collapse statistics (paper Table 2)."""
  labelled = labels >= 0
  classif = losses.softmax_cross_entropy(out['logits'], labels, labelled)
  top1 = losses.topk_correct(out['logits'], labels, 1)
  return classif, {
      'classif_loss': classif,
      'online_top1': losses.masked_mean(top1, labelled),
      'collapse_std_projection': losses.collapse_std(out['projection']),
      'collapse_std_representation': losses.collapse_std(out['representation']),
  }


class Method(NamedTuple):
  """What a self-supervised method brings to the shared step (experiment.py).

  Attributes:
    init: (rng, images [B, H, W, 3]) -> (online_params, online_state,
      target_params, target_state); target trees {} without a target.
    online: (params, state, views) -> ([output dict per view], state).
    target: the same for the target network; (None, state) without one.
    loss: (online outputs, target outputs) -> (float32 loss, {name: scalar}
      metrics of its own); it stops the target's gradient.
    target_update: (target_params, new online_params, tau) -> target_params.
  """

  init: Callable[..., Any]
  online: Callable[..., Any]
  target: Callable[..., Any]
  loss: Callable[..., Any]
  target_update: Callable[..., Any]
