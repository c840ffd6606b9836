"""Both views in one forward pass (no batch statistics) vs one pass per view.

Without batch statistics every example's output depends on that example
alone, so forwarding [view1; view2] once must give the per-view passes'
loss and gradients; with BatchNorm the per-view passes (per-view batch
statistics, as the official BYOL code) must stay.
"""

import functools

import chex
import haiku as hk
import jax
import jax.extend
import ml_collections
import numpy as np
import pytest

from byol_jax import experiment
from byol_jax.methods import byol
from byol_jax.methods import networks
from byol_jax.methods import simclr

NUM_CLASSES = 4
BATCH = 6


def _model(norm, ws, **overrides):
  cfg = ml_collections.ConfigDict(
      dict(
          depth=10,
          width_multiplier=0.125,
          stem='small',
          zero_init_last=False,
          dtype='float32',
          encoder_norm=norm,
          projector_norm=norm,
          predictor_norm=norm,
          gn_groups=4,
          encoder_ws=ws,
          heads_ws=ws,
          cross_replica_bn=False,
          projector_hidden_size=32,
          projector_output_size=16,
          predictor_hidden_size=32,
      )
  )
  cfg.update(overrides)
  return cfg


def _make(method, model):
  if method == 'byol':
    return byol.make_byol(model, NUM_CLASSES)
  return simclr.make_simclr(model, NUM_CLASSES, temperature=0.5)


def _inputs(size=16):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(7), 3)
  views = (
      jax.random.normal(k1, (BATCH, size, size, 3)),
      jax.random.normal(k2, (BATCH, size, size, 3)),
  )
  labels = jax.random.randint(k3, (BATCH,), 0, NUM_CLASSES)
  return views, labels


def _loss_and_grads(method, views, labels, jit_o0):
  # conftest's jit_o0: the checks hold for any parameters.
  params, state, tparams, tstate = jit_o0(
      method.init, jax.random.PRNGKey(0), views[0][:2]
  )
  # Move the target away from the online network, so the target pass is
  # checked on its own parameters.
  tparams = jax.tree.map(lambda x: x * 0.9 + 0.01, tparams)
  # The equalities hold at any XLA optimisation level: jit_o0 for the loss too.
  (loss, (new_state, new_tstate, metrics)), grads = jit_o0(
      jax.value_and_grad(
          functools.partial(experiment.loss_fn, method), has_aux=True
      ),
      params,
      state,
      tparams,
      tstate,
      views,
      labels,
  )
  return loss, grads, metrics, new_state, new_tstate


@pytest.mark.parametrize(
    'method,norm,ws',
    [
        ('byol', 'gn', True),  # the paper's GN+WS (§3.3)
        ('byol', 'none', False),  # the no-normalisation baseline (Table 2)
        ('simclr', 'gn', True),
    ],
)
def test_views_in_one_batch_equal_per_view_passes(
    method, norm, ws, monkeypatch, jit_o0
):
  model = _model(norm, ws)
  assert networks.views_in_one_batch(model, with_predictor=True)
  views, labels = _inputs()
  one = _loss_and_grads(_make(method, model), views, labels, jit_o0)
  monkeypatch.setattr(networks, 'views_in_one_batch', lambda *a, **k: False)
  per_view = _loss_and_grads(_make(method, model), views, labels, jit_o0)
  np.testing.assert_allclose(one[0], per_view[0], rtol=1e-5)
  for key in one[2]:
    np.testing.assert_allclose(
        one[2][key], per_view[2][key], rtol=1e-5, atol=1e-6, err_msg=key
    )
  flat_one = jax.tree_util.tree_flatten_with_path(one[1])[0]
  flat_ref = jax.tree.leaves(per_view[1])
  assert len(flat_one) == len(flat_ref)
  for (path, a), b in zip(flat_one, flat_ref):
    scale = float(np.abs(np.asarray(b)).max())
    np.testing.assert_allclose(
        a,
        b,
        rtol=1e-4,
        atol=1e-5 * max(scale, 1e-3),
        err_msg=jax.tree_util.keystr(path),
    )
  # The gradients are not vacuous.
  assert max(float(np.abs(np.asarray(g)).max()) for g in flat_ref) > 1e-3


def _conv_batch_sizes(method, views, labels):
  """The batch dimension of every convolution's input in the loss's jaxpr."""
  params, state, tparams, tstate = jax.eval_shape(  # shapes suffice
      method.init, jax.random.PRNGKey(0), views[0][:2]
  )
  jaxpr = jax.make_jaxpr(functools.partial(experiment.loss_fn, method))(
      params, state, tparams, tstate, views, labels
  )
  sizes = []

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'conv_general_dilated':
        sizes.append(eqn.invars[0].aval.shape[0])
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jaxpr.jaxpr)
  return sizes


@pytest.mark.parametrize('method', ['byol', 'simclr'])
def test_forward_passes_per_norm(method):
  """GN: one pass over 2B images per network; BN: two passes over B each."""
  views, labels = _inputs()
  # ResNet-10 small stem: stem + 4 blocks x 2 convs + 3 projection shortcuts.
  convs_per_pass = 12
  networks_ = 2 if method == 'byol' else 1
  gn = _conv_batch_sizes(_make(method, _model('gn', True)), views, labels)
  assert gn == [2 * BATCH] * (convs_per_pass * networks_)
  bn = _conv_batch_sizes(_make(method, _model('bn', False)), views, labels)
  assert bn == [BATCH] * (2 * convs_per_pass * networks_)
  # BN in the predictor alone: the online network keeps per-view passes,
  # the target (encoder + projector, GN) takes one.
  mixed = _model('gn', True, predictor_norm='bn')
  assert not networks.views_in_one_batch(mixed, with_predictor=True)
  assert networks.views_in_one_batch(mixed, with_predictor=False)


def test_bn_state_is_two_sequential_per_view_updates(jit_o0):
  """BYOL with BN: the new BN state is view 1's update, then view 2's."""
  model = _model('bn', False)
  method = byol.make_byol(model, NUM_CLASSES)
  views, labels = _inputs()
  _, _, _, new_state, new_tstate = _loss_and_grads(
      method, views, labels, jit_o0
  )
  # conftest's jit_o0: the checks hold for any parameters.
  params, state, tparams, tstate = jit_o0(
      method.init, jax.random.PRNGKey(0), views[0][:2]
  )
  tparams = jax.tree.map(lambda x: x * 0.9 + 0.01, tparams)
  for with_predictor, with_classifier, p, s, got in (
      (True, True, params, state, new_state),
      (False, False, tparams, tstate, new_tstate),
  ):
    forward = networks.make_forward(
        model,
        NUM_CLASSES,
        with_predictor=with_predictor,
        with_classifier=with_classifier,
    )
    for view in views:
      _, s = forward.apply(p, s, None, view, is_training=True)
    counters = [
        int(x)
        for k, x in hk.data_structures.to_haiku_dict(got)[
            'encoder/stem_norm'
        ].items()
        if k == 'counter'
    ]
    assert counters == [2]  # two updates: one per view.
    chex.assert_trees_all_close(got, s, rtol=1e-5, atol=1e-6)
