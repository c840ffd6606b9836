"""Tests for byol_jax/optim.py: the LARS mask and a hand-computed update."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byol_jax import optim
from byol_jax.models import norms

# ------------------------------------------------------------------- mask.


def _shapes(tree):
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
      tree,
      is_leaf=lambda x: isinstance(x, tuple),
  )


def test_lars_mask_on_hand_built_haiku_tree():
  params = _shapes(
      {
          'encoder/conv': {'w': (3, 3, 3, 8)},
          'encoder/batchnorm': {'scale': (8,), 'offset': (8,)},
          'encoder/group_norm': {'scale': (8,), 'offset': (8,)},
          'head/linear': {'w': (8, 4), 'b': (4,)},
          # Degenerate kernels are still weights: a linear to one output, a 1x1
          # conv on one channel.
          'scalar_head': {'w': (4, 1), 'b': (1,)},
          'gray_conv': {'w': (1, 1, 1, 8)},
      }
  )
  assert optim.lars_mask(params) == {
      'encoder/conv': {'w': True},
      'encoder/batchnorm': {'scale': False, 'offset': False},
      'encoder/group_norm': {'scale': False, 'offset': False},
      'head/linear': {'w': True, 'b': False},
      'scalar_head': {'w': True, 'b': False},
      'gray_conv': {'w': True},
  }


def test_lars_mask_refuses_a_matrix_that_is_not_a_kernel():
  # hk.BatchNorm keeps scale/offset in broadcast shape [1, 1, 1, C]; this
  # codebase's norms never do, so the mask names such a leaf, not guesses.
  params = _shapes({'encoder/hk_batch_norm': {'scale': (1, 1, 1, 8)}})
  with pytest.raises(
      ValueError,
      match=r'encoder/hk_batch_norm/scale of shape ' r'\(1, 1, 1, 8\)',
  ):
    optim.lars_mask(params)


def test_lars_mask_ignores_module_names_on_real_haiku_modules():
  def net(x):
    x = hk.Conv2D(8, 3, name='a')(x)
    x = norms.BatchNorm(name='b')(x, True)
    x = hk.GroupNorm(2, name='c')(x)
    x = hk.LayerNorm(-1, True, True, name='d')(x)
    return hk.Linear(3, name='e')(x.reshape(x.shape[0], -1))

  init = hk.transform_with_state(net).init
  params, _ = jax.eval_shape(
      init, jax.random.PRNGKey(0), jnp.zeros((2, 4, 4, 3))
  )
  mask = optim.lars_mask(params)
  decayed = sorted(f'{m}/{n}' for m in mask for n in mask[m] if mask[m][n])
  assert decayed == ['a/w', 'e/w']
  # The official filter (leaf 'b' or 'norm' in the module name) would decay
  # all of b/scale, c/offset, d/scale... under these module names.
  assert sum(not v for v in jax.tree.leaves(mask)) == 8


def test_lars_mask_on_resnet18_and_heads():
  resnet = pytest.importorskip('byol_jax.models.resnet')
  heads = pytest.importorskip('byol_jax.models.heads')

  def net(x, is_training):
    h = resnet.ResNet(18, stem='small', norm='bn', name='encoder')(
        x, is_training
    )
    z = heads.MLP(32, 16, norm='bn', name='projector')(h, is_training)
    return heads.MLP(32, 16, norm='bn', name='predictor')(z, is_training)

  init = hk.transform_with_state(net).init
  params, _ = jax.eval_shape(
      lambda k: init(k, jnp.zeros((2, 32, 32, 3)), True), jax.random.PRNGKey(0)
  )
  mask = optim.lars_mask(params)
  excluded = sorted(f'{m}/{n}' for m in mask for n in mask[m] if not mask[m][n])
  decayed = sorted(f'{m}/{n}' for m in mask for n in mask[m] if mask[m][n])

  # ResNet-18: stem norm, 2 norms in each of the 8 basic blocks, a shortcut
  # norm in the first block of stages 1-3; each head: 2 biases and 1 norm.
  norms = ['encoder/stem_norm']
  for s in range(4):
    for b in range(2):
      norms += [f'encoder/stage{s}_block{b}/norm_{i}' for i in range(2)]
    if s > 0:
      norms.append(f'encoder/stage{s}_block0/shortcut_norm')
  expected = [f'{n}/{p}' for n in norms for p in ('scale', 'offset')]
  for head in ('projector', 'predictor'):
    expected += [
        f'{head}/linear_0/b',
        f'{head}/norm_0/scale',
        f'{head}/norm_0/offset',
    ]
  assert excluded == sorted(expected)
  assert len(excluded) == 46
  # Everything else is a convolution or linear kernel: 17 + 3 shortcut convs
  # and 2 linears per head.
  assert len(decayed) == 24 and all(p.endswith('/w') for p in decayed)


# ------------------------------------------------------------- optimizer.

WD, ETA, MOMENTUM = 0.1, 0.01, 0.9


def _lr(count):
  # 0.1 on the first update, 0.2 on the second: a changing learning rate
  # separates the official order (lr after momentum) from optax.lars.
  return 0.1 * (count + 1)


def _run(opt, params, grads_seq):
  state = opt.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for grads in grads_seq:
    params, state = step(params, state, grads)
  return params


W0 = jnp.array([[3.0, 0.0], [0.0, 4.0]])  # ||W0|| = 5.
B0 = jnp.array([1.0, -2.0])
PARAMS = {'linear': {'w': W0, 'b': B0}}
# Step 1: D1 = G1 + 0.1 W0 = [[0, .6], [.8, 0]], ||D1|| = 1.
G1 = {
    'linear': {
        'w': jnp.array([[-0.3, 0.6], [0.8, -0.4]]),
        'b': jnp.array([0.5, -1.0]),
    }
}
# Step 2 (W1 = [[3, -.003], [-.004, 4]], see below): D2 = G2 + 0.1 W1
# = [[0, 0], [0, 2]], ||D2|| = 2.
G2 = {
    'linear': {
        'w': jnp.array([[-0.3, 0.0003], [0.0004, 1.6]]),
        'b': jnp.array([1.0, 2.0]),
    }
}


def test_lars_two_steps_hand_computed():
  opt = optim.make_optimizer(
      _lr, weight_decay=WD, momentum=MOMENTUM, trust_coefficient=ETA
  )
  w1_params = _run(opt, PARAMS, [G1])
  # Step 1, w: trust ratio 0.01 * 5 / 1 = 0.05, mu1 = 0.05 D1
  # = [[0, .03], [.04, 0]], W1 = W0 - 0.1 mu1.
  np.testing.assert_allclose(
      w1_params['linear']['w'], [[3.0, -0.003], [-0.004, 4.0]], rtol=1e-6
  )
  # b (excluded: no decay, no trust ratio): mu1 = g1, b1 = b0 - 0.1 g1.
  np.testing.assert_allclose(w1_params['linear']['b'], [0.95, -1.9], rtol=1e-6)

  final = _run(opt, PARAMS, [G1, G2])
  # Step 2, w: ||W1|| = sqrt(25.000025), ratio = 0.01 ||W1|| / 2,
  # A2 = ratio * D2 = [[0, 0], [0, 0.01 ||W1||]], mu2 = 0.9 mu1 + A2,
  # W2 = W1 - 0.2 mu2.
  a2 = 0.01 * np.sqrt(25.000025)
  mu2 = np.array([[0.0, 0.027], [0.036, a2]])
  expected_w2 = np.array([[3.0, -0.003], [-0.004, 4.0]]) - 0.2 * mu2
  np.testing.assert_allclose(final['linear']['w'], expected_w2, rtol=1e-6)
  np.testing.assert_allclose(
      final['linear']['w'], [[3.0, -0.0084], [-0.0112, 3.989999995]], rtol=1e-6
  )
  # b: mu2 = 0.9 [.5, -1] + [1, 2] = [1.45, 1.1]; b2 = b1 - 0.2 mu2.
  np.testing.assert_allclose(final['linear']['b'], [0.66, -2.12], rtol=1e-6)

  # optax.lars multiplies by the learning rate before the momentum trace:
  # b2 = b1 - (0.9 * 0.1 g1 + 0.2 g2) = [0.705, -2.21] != [0.66, -2.12].
  optax_final = _run(
      optax.lars(
          _lr,
          weight_decay=WD,
          weight_decay_mask=optim.lars_mask,
          trust_coefficient=ETA,
          trust_ratio_mask=optim.lars_mask,
          momentum=MOMENTUM,
      ),
      PARAMS,
      [G1, G2],
  )
  np.testing.assert_allclose(
      optax_final['linear']['b'], [0.705, -2.21], rtol=1e-6
  )


def test_lars_constant_lr_matches_optax_lars():
  # With a constant learning rate the two orders agree.
  kwargs = dict(weight_decay=WD, trust_coefficient=ETA, momentum=MOMENTUM)
  ours = _run(optim.make_optimizer(0.1, **kwargs), PARAMS, [G1, G2])
  theirs = _run(
      optax.lars(
          0.1,
          weight_decay_mask=optim.lars_mask,
          trust_ratio_mask=optim.lars_mask,
          **kwargs,
      ),
      PARAMS,
      [G1, G2],
  )
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs
  )
  # ...and the comparison is not vacuous: b2 = b0 - 0.1 (g1 + 0.9 g1 + g2).
  np.testing.assert_allclose(ours['linear']['b'], [0.805, -2.01], rtol=1e-6)


def test_lars_trust_ratio_is_one_where_a_norm_is_zero():
  params = {'zero': {'w': jnp.zeros((2, 2))}, 'still': {'w': W0}}
  grads = {
      'zero': {'w': jnp.array([[1.0, 2.0], [3.0, 4.0]])},
      'still': {'w': jnp.zeros((2, 2))},
  }
  opt = optim.make_optimizer(0.5, weight_decay=0.0, trust_coefficient=ETA)
  out = _run(opt, params, [grads])
  # ||w|| = 0: ratio 1, plain SGD step -0.5 g. ||d|| = 0: no NaN, no move.
  np.testing.assert_allclose(out['zero']['w'], [[-0.5, -1.0], [-1.5, -2.0]])
  np.testing.assert_array_equal(out['still']['w'], W0)


def test_lars_nesterov_two_steps_on_excluded_param():
  params = {'linear': {'b': B0}}
  g1 = {'linear': {'b': G1['linear']['b']}}
  g2 = {'linear': {'b': G2['linear']['b']}}
  opt = optim.make_optimizer(
      _lr, weight_decay=WD, momentum=MOMENTUM, nesterov=True
  )
  out = _run(opt, params, [g1, g2])
  # Step 1: mu1 = g1, update -0.1 (g1 + 0.9 mu1) = -0.1 * 1.9 g1.
  # Step 2: mu2 = [1.45, 1.1], update -0.2 (g2 + 0.9 mu2).
  b1 = np.array([1.0, -2.0]) - 0.19 * np.array([0.5, -1.0])
  b2 = b1 - 0.2 * (np.array([1.0, 2.0]) + 0.9 * np.array([1.45, 1.1]))
  np.testing.assert_allclose(out['linear']['b'], b2, rtol=1e-6)


def test_lr_multiplier_scales_only_that_component():
  params = {
      'predictor/linear_0': {'w': W0, 'b': B0},
      'predictorx/linear': {'w': W0},  # not 'predictor/...'.
      'encoder/conv': {'w': W0},
  }
  grads = {
      'predictor/linear_0': {'w': G1['linear']['w'], 'b': G1['linear']['b']},
      'predictorx/linear': {'w': G1['linear']['w']},
      'encoder/conv': {'w': G1['linear']['w']},
  }
  kwargs = dict(weight_decay=WD, momentum=MOMENTUM, trust_coefficient=ETA)
  plain = _run(optim.make_optimizer(_lr, **kwargs), params, [grads, grads])
  fast = _run(
      optim.make_optimizer(_lr, lr_multipliers={'predictor': 10.0}, **kwargs),
      params,
      [grads, grads],
  )
  # Two steps: the first update moves w, so the second's weight decay and
  # trust ratio differ; compare one step exactly instead.
  one_plain = _run(optim.make_optimizer(_lr, **kwargs), params, [grads])
  one_fast = _run(
      optim.make_optimizer(_lr, lr_multipliers={'predictor': 10.0}, **kwargs),
      params,
      [grads],
  )
  for name in ('w', 'b'):
    np.testing.assert_allclose(
        one_fast['predictor/linear_0'][name]
        - params['predictor/linear_0'][name],
        10.0
        * (
            one_plain['predictor/linear_0'][name]
            - params['predictor/linear_0'][name]
        ),
        rtol=1e-5,
    )
  for module in ('predictorx/linear', 'encoder/conv'):
    np.testing.assert_array_equal(fast[module]['w'], plain[module]['w'])
  assert not np.allclose(
      fast['predictor/linear_0']['w'], plain['predictor/linear_0']['w']
  )


@pytest.mark.parametrize(
    'kwargs,field',
    [
        (
            dict(weight_decay=0.0, lr_multipliers={'predictor': 0.0}),
            'predictor',
        ),
        (dict(weight_decay=-1.0), 'weight_decay'),
        (dict(weight_decay=0.0, momentum=1.0), 'momentum'),
        (dict(weight_decay=0.0, trust_coefficient=0.0), 'trust_coefficient'),
        (dict(weight_decay=0.0, eps=-1.0), 'eps'),
    ],
)
def test_make_optimizer_validates_arguments(kwargs, field):
  with pytest.raises(ValueError, match=field):
    optim.make_optimizer(0.1, **kwargs)
