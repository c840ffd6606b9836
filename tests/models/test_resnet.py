"""ResNet: parameter counts (no compile), shapes, names, errors."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax.models import resnet


def _param_shapes(depth, width=1, norm='bn', stem='imagenet', size=224):
  fwd = hk.transform_with_state(
      lambda x: resnet.ResNet(depth, width, stem, norm)(x, is_training=True)
  )
  params, state = jax.eval_shape(
      fwd.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))
  )
  return params, state


def _count(tree):
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _analytic_count(depth, width):
  """Parameters of a ResNet v1 encoder, derived by hand from the layer list.

  conv k x k, cin -> cout: k*k*cin*cout (no bias); each norm: 2*c (scale and
  offset). Written independently of resnet.py, as the reference it must meet.
  """
  blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 200: (3, 24, 36, 3)}[depth]
  bottleneck = depth >= 50
  w = lambda c: int(c * width)
  total = 7 * 7 * 3 * w(64) + 2 * w(64)  # stem
  cin = w(64)
  for stage, n in enumerate(blocks):
    mid = w(64 * 2**stage)
    cout = 4 * mid if bottleneck else mid
    for b in range(n):
      if bottleneck:
        total += cin * mid + 9 * mid * mid + mid * cout + 2 * (2 * mid + cout)
      else:
        total += 9 * cin * mid + 9 * mid * mid + 2 * (2 * mid)
      if b == 0 and (cin != cout or stage > 0):
        total += cin * cout + 2 * cout  # projection shortcut
      cin = cout
  return total


@pytest.mark.parametrize(
    'depth,width,expected',
    [
        # torchvision's resnet18 / resnet50 counts minus the 1000-way fc layer:
        # 11,689,512 - 513,000 and 25,557,032 - 2,049,000.
        (18, 1, 11_176_512),
        (50, 1, 23_508_032),
        # Derived with _analytic_count; BYOL paper's Table lists 94M and 250M.
        (50, 2, 93_907_072),
        (200, 2, 250_128_512),
    ],
)
def test_parameter_counts(depth, width, expected):
  assert _analytic_count(depth, width) == expected
  bn_params, bn_state = _param_shapes(depth, width, 'bn')
  gn_params, gn_state = _param_shapes(depth, width, 'gn')
  assert _count(bn_params) == expected
  assert _count(gn_params) == expected  # GN has the same scale/offset.
  assert jax.tree.structure(bn_params) == jax.tree.structure(gn_params)
  assert _count(bn_state) > 0 and not gn_state  # only BN keeps statistics.


def test_feature_size_and_shapes():
  assert resnet.feature_size(50) == 2048
  assert resnet.feature_size(50, 2) == 4096
  assert resnet.feature_size(18) == 512
  fwd = hk.transform_with_state(
      lambda x: resnet.ResNet(18, 0.25, 'small', 'gn')(x, is_training=True)
  )
  x = jnp.zeros((3, 32, 32, 3))
  out = jax.eval_shape(
      lambda x: fwd.apply(*fwd.init(jax.random.PRNGKey(0), x), None, x)[0], x
  )
  assert out.shape == (3, resnet.feature_size(18, 0.25)) == (3, 128)
  assert out.dtype == jnp.float32


def test_stems():
  params, _ = _param_shapes(18, 1, 'bn', 'small', size=32)
  assert params['encoder/stem_conv']['w'].shape == (3, 3, 3, 64)
  params, _ = _param_shapes(18, 1, 'bn', 'imagenet')
  assert params['encoder/stem_conv']['w'].shape == (7, 7, 3, 64)
  # The small stem differs only in its first kernel: 3x3 instead of 7x7.
  assert _count(_param_shapes(18, 1, 'bn', 'small', 32)[0]) == (
      11_176_512 - (7 * 7 - 3 * 3) * 3 * 64
  )


def test_module_names_are_stable_across_norm_kinds():
  names = {}
  for kind in ('bn', 'gn', 'ln', 'affine'):
    params, _ = _param_shapes(18, 0.25, kind, 'small', 32)
    names[kind] = sorted(params)
  assert names['bn'] == names['gn'] == names['ln'] == names['affine']
  assert 'encoder/stage1_block0/shortcut_norm' in names['bn']
  assert 'encoder/stage0_block1/norm_1' in names['bn']
  none_params, _ = _param_shapes(18, 0.25, 'none', 'small', 32)
  assert not any('norm' in name for name in none_params)


def _norm_scales(**kwargs):
  """{module name: initial norm scale} of a ResNet-50, from its initialisers.

  The network is only traced (jax.eval_shape); each norm scale's own
  initialiser is then evaluated, so no eager op runs per layer.
  """
  inits = {}

  def record(next_creator, shape, dtype, init, context):
    if context.name == 'scale':
      inits[context.module_name] = (init, shape, dtype)
    return next_creator(shape, dtype, init)

  def forward(x):
    with hk.custom_creator(record):
      return resnet.ResNet(50, 0.25, 'small', 'gn', **kwargs)(x, True)

  jax.eval_shape(
      hk.transform_with_state(forward).init,
      jax.random.PRNGKey(0),
      jnp.zeros((1, 8, 8, 3)),
  )
  return {
      name: np.asarray(init(shape, dtype))
      for name, (init, shape, dtype) in inits.items()
  }


def test_zero_init_last_norm_scale():
  scales = _norm_scales(zero_init_last=True)
  assert sum(name.endswith('norm_2') for name in scales) == 16  # 3+4+6+3
  for name, scale in scales.items():
    last = name.endswith('norm_2')  # bottleneck blocks have norm_0..norm_2.
    np.testing.assert_array_equal(scale, 0.0 if last else 1.0)
  scales = _norm_scales()  # the default: gamma 1
  assert scales and all(np.all(s == 1.0) for s in scales.values())


def test_paper_configs_zero_init_only_the_modified_init():
  from byol_jax.config import configs  # pylint: disable=g-import-not-at-top

  for name, expected in (
      ('byol_bn', False),
      ('no_bn', False),
      ('gn_ws', False),
      ('ablation', False),
      ('simclr', False),
      ('modified_init', True),
  ):
    assert configs.load_experiment(name).model.zero_init_last is expected, name


def test_bfloat16_compute_matches_float32():
  fwd = hk.transform_with_state(
      lambda x, dtype: resnet.ResNet(
          10,
          0.25,
          'small',
          'gn',
          weight_standardization=True,
          zero_init_last=False,
          dtype=dtype,
      )(x, True)
  )
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 16, 16, 3))
  params, state = fwd.init(jax.random.PRNGKey(0), x, jnp.float32)
  apply = jax.jit(fwd.apply, static_argnums=4)
  out32, _ = apply(params, state, None, x, jnp.float32)
  out16, _ = apply(params, state, None, x, jnp.bfloat16)
  assert out16.dtype == jnp.float32
  assert jax.tree.leaves(params)[0].dtype == jnp.float32
  rel = jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32)
  assert 0 < rel < 0.05  # 10 seeds (AMD EPYC): 0.0107 +- 0.0009 (max 0.012)


@pytest.mark.parametrize(
    'kwargs,field',
    [
        (dict(depth=42), 'depth=42'),
        (dict(stem='cifar'), "stem='cifar'"),
        (dict(norm='batchnorm'), "norm='batchnorm'"),
        (dict(width_multiplier=0.3), 'width_multiplier=0.3'),
    ],
)
def test_clear_errors(kwargs, field):
  args = dict(depth=18)
  args.update(kwargs)
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    hk.transform_with_state(lambda x: resnet.ResNet(**args)(x, True)).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))
    )


def test_gn_groups_must_divide_channels():
  from byol_jax.models import norms  # pylint: disable=g-import-not-at-top

  norm = norms.NormSpec('gn', groups=24)
  with pytest.raises(ValueError, match='groups=24 does not divide'):
    jax.eval_shape(
        hk.transform_with_state(
            lambda x: resnet.ResNet(18, 1, 'small', norm)(x, True)
        ).init,
        jax.random.PRNGKey(0),
        jnp.zeros((1, 32, 32, 3)),
    )
