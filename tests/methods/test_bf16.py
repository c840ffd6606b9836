"""model.dtype='bfloat16': bf16 convolutions and matmuls, float32 state.

The mixed-precision contract of models/layers.py and models/norms.py: every
convolution and every matmul of the encoder, projector and predictor (forward
and backward) runs on bfloat16 operands, while the parameters, the BN
statistics, the LARS
state and the target (EMA) stay float32. Checked on the lowered StableHLO of
the whole training step (augmentation, loss, gradients, LARS, EMA).
"""

import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from byol_jax import experiment

NUM_CLASSES = 5  # a size no network layer has: marks the classifier's dots.
BATCH = 4


def _step(norm, ws):
  model = dict(
      depth=10,
      width_multiplier=0.125,
      stem='small',
      zero_init_last=False,
      dtype='bfloat16',
      encoder_norm=norm,
      projector_norm=norm,
      predictor_norm=norm,
      gn_groups=4,
      encoder_ws=ws,
      heads_ws=ws,
      cross_replica_bn=False,
      projector_hidden_size=32,
      projector_output_size=16,
      predictor_hidden_size=24,
  )
  config = ml_collections.ConfigDict(
      dict(
          method='byol',
          model=model,
          training=dict(
              base_learning_rate=0.2,
              global_batch_size=BATCH,
              weight_decay=1e-6,
              trust_coefficient=1e-3,
              predictor_lr_multiplier=1.0,
              base_ema=0.99,
              accumulation_steps=1,
          ),
      )
  )
  # What make_update reads of a plan.PretrainPlan.
  steps = types.SimpleNamespace(
      num_classes=NUM_CLASSES, total_steps=10, warmup_steps=1
  )
  method, opt, update = experiment.make_update(config, steps, axis_name=None)
  images = jnp.full((BATCH, 16, 16, 3), 0.5)
  batch = {
      'view1': images,
      'view2': images,
      'label': jnp.zeros((BATCH,), jnp.int32),
  }
  state = jax.eval_shape(
      lambda: experiment.init_train_state(
          method, opt, jax.random.PRNGKey(0), images
      )
  )
  step = jax.jit(update, donate_argnums=(0,))
  return step, state, batch


def _operand_types(text, op):
  """[(lhs type, rhs type)] of every `op` in StableHLO text."""
  types = []
  for line in text.splitlines():
    if f'stablehlo.{op}' not in line:
      continue
    signature = line.rsplit(' : ', 1)[1].split('->')[0]
    types.append(tuple(re.findall(r'tensor<([^>]*)>', signature)[:2]))
  return types


@pytest.mark.parametrize('norm,ws', [('gn', True), ('bn', False)])
def test_bfloat16_step_computes_in_bf16_and_keeps_float32_state(norm, ws):
  step, state, batch = _step(norm, ws)
  text = step.lower(state, batch).as_text()
  convs = _operand_types(text, 'convolution')
  # Forward, input gradient and kernel gradient of the online network's 12
  # convolutions per view, and the target's forward.
  assert len(convs) >= 12 * 3
  assert all(a.endswith('xbf16') and b.endswith('xbf16') for a, b in convs), [
      c for c in convs if not c[0].endswith('bf16')
  ][:5]
  dots = _operand_types(text, 'dot_general')
  f32 = [
      d for d in dots if not (d[0].endswith('xbf16') and d[1].endswith('xbf16'))
  ]
  # Projector and predictor (2 linears each, online and target), forward
  # and backward, all in bf16 ...
  assert len(dots) - len(f32) >= 6 * 2
  # ... and the only float32 matmuls are the augmentation's luma weights
  # (images x [3] RGB weights, before the network casts to bf16) and the
  # online classifier's (forward and weight gradient; it reads the
  # stop-gradient float32 representation, as an accuracy monitor), whose
  # operands have the class dimension.
  luma = [d for d in f32 if d[1] == '3xf32']
  classifier = [
      d for d in f32 if any(re.search(rf'(^|x){NUM_CLASSES}x', t) for t in d)
  ]
  assert len(classifier) == 2 and len(luma) + len(classifier) == len(f32), f32
  out_state, metrics = jax.eval_shape(step, state, batch)
  for part in (
      'online_params',
      'online_state',
      'target_params',
      'target_state',
      'opt_state',
  ):
    leaves = [
        x
        for x in jax.tree.leaves(getattr(out_state, part))
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    assert leaves or part.endswith('state') and norm != 'bn', part
    assert all(x.dtype == jnp.float32 for x in leaves), part
  if norm == 'bn':  # the BN moving statistics themselves.
    assert out_state.online_state['encoder/stem_norm']['var'].dtype == (
        jnp.float32
    )
  assert metrics['loss'].dtype == jnp.float32
