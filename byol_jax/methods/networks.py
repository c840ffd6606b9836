"""The networks a method trains, built from the `model` sub-config.

One Haiku function builds encoder -> projector [-> predictor] [+ classifier];
online and target networks are two transforms of it, so the target tree is
exactly the online tree restricted to 'encoder/...' and 'projector/...'.
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
  """ValueError naming the first bad `model.*` field that shapes the networks.

  Depth, stem, norm kinds, dtype; a width multiplier giving fractional or zero
  channels, or channels the GN groups do not divide; a GN/LN head with fewer
  than HEAD_MIN_PER_GROUP units per group; 1-d projections.
  """
  resnet.check_depth(model.depth, 'model.depth')
  if model.stem not in resnet.STEMS:
    raise ValueError(
        f'model.stem={model.stem!r} is not a stem; use one of '
        f'{", ".join(resnet.STEMS)}.'
    )
  for component in ('encoder', 'projector', 'predictor'):
    norms.check_norm_kind(model[f'{component}_norm'], f'model.{component}_norm')
  if model.dtype not in _DTYPES:
    raise ValueError(f'model.dtype={model.dtype!r}; use float32 or bfloat16.')
  w, groups = model.width_multiplier, model.gn_groups
  channels = resnet.norm_channels(model.depth, w)
  for where, c in channels.items():
    if c != int(c) or c < 1:
      raise ValueError(
          f'model.width_multiplier={w} gives {c:g} channels in {where}, not a '
          'whole number >= 1; use a multiplier m whose 64 x m is a whole '
          'number (e.g. 0.25, 0.5, 1, 2).'
      )
    if model.encoder_norm == 'gn' and c % groups:
      raise ValueError(
          f'model.width_multiplier={w} gives {c:g} channels in {where}, not '
          f'divisible by the {groups} GroupNorm groups (model.gn_groups='
          f'{groups}); use a model.gn_groups that divides {c:g}, or a '
          f'multiplier m whose 64 x m is a multiple of {groups} (e.g. '
          f'{groups / 64:g}).'
      )
  if model.projector_output_size < 2:
    # Measured, 30 steps: gn_ws:tiny's loss 2.000 at every step; byol_bn:tiny's
    # 2.5-5.4, moved by the batch statistics alone.
    raise ValueError(
        f'model.projector_output_size={model.projector_output_size}: the '
        'losses compare l2-normalised outputs, and one of 1 dimension is its '
        'sign, whose gradient is 0 (nothing trains); use at least 2 (the '
        'paper: 256).'
    )
  for head in ('projector', 'predictor'):
    kind, field = model[f'{head}_norm'], f'model.{head}_hidden_size'
    if kind not in ('gn', 'ln'):
      continue
    hidden, g = model[f'{head}_hidden_size'], groups if kind == 'gn' else 1
    name = (
        f'{g} GroupNorm groups (model.gn_groups={g})'
        if kind == 'gn'
        else 'LayerNorm'
    )
    if hidden % g:
      raise ValueError(
          f'{field}={hidden} is not divisible by the {name} of '
          f'the {head}; use a multiple of {g}.'
      )
    if hidden // g < HEAD_MIN_PER_GROUP:
      raise ValueError(
          f"{field}={hidden} gives the {head}'s {name} {hidden // g} unit(s) "
          'per group, too few to learn: a group of 1 is normalised to 0 (the '
          'head outputs 0 and nothing trains: a constant loss, measured 0.000 '
          'or 2.000), of 2 to its sign (collapse within 20 steps); use at '
          'least '
          f'{HEAD_MIN_PER_GROUP * g} ({HEAD_MIN_PER_GROUP} per group).'
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
  """The 'encoder' resnet.ResNet: images [N, H, W, 3] -> representations [N, D].

  Shared by make_forward and encoder.py, so both build the same network with
  the same parameter paths. Call inside a Haiku transform.
  """
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
    with_predictor: add the BYOL predictor ('prediction'; online network only).
    with_classifier: add a linear classifier on the stop-gradient
      representation ('logits'; the official code's online accuracy monitor).
    axis_name: collective axis for cross-replica BN (None outside pmap).

  Returns:
    hk.TransformedWithState; outputs [N, ...] float32.
  """
  dtype = _DTYPES[model.dtype]

  def forward(images, is_training):
    out = {}
    out['representation'] = make_encoder(model, axis_name)(images, is_training)
    out['projection'] = heads.MLP(
        model.projector_hidden_size,
        model.projector_output_size,
        norm_spec(model, 'projector', axis_name),
        model.heads_ws,
        dtype,
        name='projector',
    )(out['representation'], is_training)
    if with_predictor:
      out['prediction'] = heads.MLP(
          model.predictor_hidden_size,
          model.projector_output_size,
          norm_spec(model, 'predictor', axis_name),
          model.heads_ws,
          dtype,
          name='predictor',
      )(out['projection'], is_training)
    if with_classifier:
      out['logits'] = heads.LinearClassifier(num_classes)(
          jax.lax.stop_gradient(out['representation'])
      )
    return out

  return hk.transform_with_state(forward)


BATCH_INDEPENDENT_NORMS = frozenset(('gn', 'ln', 'none', 'affine'))


def views_in_one_batch(model, *, with_predictor: bool) -> bool:
  """Whether no norm uses batch statistics, so both views may go as one batch.

  Each example's output then depends on that example alone: one pass of
  [view1; view2] computes exactly the per-view outputs, with half the kernel
  launches. BatchNorm anywhere keeps one pass per view: per-view batch
  statistics are the official code's behaviour (byol/byol_experiment.py).
  """
  components = ('encoder', 'projector') + (
      ('predictor',) if with_predictor else ()
  )
  return all(
      norms.check_norm_kind(model[f'{c}_norm']) in BATCH_INDEPENDENT_NORMS
      for c in components
  )


def forward_views(
    model, transformed: hk.TransformedWithState, with_predictor: bool
):
  """fn(params, state, views) -> ([output dict per view], state), training mode.

  One pass of the concatenated views when views_in_one_batch (same outputs);
  otherwise one pass per view, BN state threaded view 1 -> view 2.
  """
  one_batch = views_in_one_batch(model, with_predictor=with_predictor)

  def forward(params, state, views):
    if one_batch:
      out, state = transformed.apply(
          params, state, None, jnp.concatenate(views), is_training=True
      )
      bounds = np.cumsum([v.shape[0] for v in views])[:-1].tolist()
      parts = {k: jnp.split(v, bounds) for k, v in out.items()}
      return [
          {k: p[i] for k, p in parts.items()} for i in range(len(views))
      ], state
    outputs = []
    for view in views:
      out, state = transformed.apply(
          params, state, None, view, is_training=True
      )
      outputs.append(out)
    return outputs, state

  return forward


def restrict(tree, modules=TARGET_MODULES) -> dict:
  """The part of a Haiku tree under the given top-level modules (not copied)."""
  return hk.data_structures.filter(
      lambda module, name, value: module.split('/')[0] in modules, tree
  )


def classifier_and_monitors(out: dict, labels: jax.Array):
  """(classifier loss, metrics) of one view's outputs and [B] int labels.

  Labels < 0 (unlabelled examples) are left out of the loss and accuracy. The
  classifier sees the stop-gradient representation, so its loss leaves the
  encoder's gradient unchanged.
  """
  labelled = labels >= 0
  classif = losses.softmax_cross_entropy(out['logits'], labels, labelled)
  metrics = {
      'classif_loss': classif,
      'online_top1': losses.masked_mean(
          losses.topk_correct(out['logits'], labels, 1), labelled
      ),
      # Collapse statistic: per-dimension std of L2-normalised vectors times
      # sqrt(dim); about 1 when spread out, 0 when collapsed (paper Table 2).
      'collapse_std_projection': metrics_lib.collapse_std(out['projection']),
      'collapse_std_representation': metrics_lib.collapse_std(
          out['representation']
      ),
  }
  return classif, metrics


class Method(NamedTuple):
  """What a self-supervised method brings to the shared step (experiment.py).

  Attributes:
    init: init(rng, images [B, H, W, 3]) -> (online_params, online_state,
      target_params, target_state); target trees {} without a target network.
    online: (params, state, views) -> ([output dict per view], state), the
      online network on the two augmented views (forward_views).
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
