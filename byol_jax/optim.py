"""LARS (You et al., 2017) as used by BYOL, built from optax primitives.

BYOL paper section 3.3: "We use the LARS optimizer ... we use a global weight
decay parameter of 1.5e-6 while excluding the biases and batch normalization
parameters from both LARS adaptation and weight decay." Richemond et al.
(2020) keep this optimizer; with GroupNorm + Weight Standardization the
excluded set is biases and every normalisation (GN/LN/affine) scale and
offset, which `lars_mask` finds from the parameter shapes, not module names.

Update rule, per parameter w with gradient g, in the order of the official
code (deepmind-research byol/utils/optimizers.py: lars = add_weight_decay ->
scale_by_lars -> scale(-lr)):

  d_t  = g_t + wd * w_t                                  (masked: d_t = g_t)
  a_t  = d_t * eta * ||w_t|| / ||d_t||                   (masked: a_t = d_t)
         (ratio taken as 1 when ||w_t|| or ||d_t|| is 0)
  mu_t = momentum * mu_{t-1} + a_t
  w_{t+1} = w_t - lr_t * mu_t

Difference from `optax.lars` (optax 0.2.8): optax scales by the learning rate
*before* the momentum trace (mu_t = momentum * mu_{t-1} + lr_t * a_t, update
-mu_t), so past steps keep the learning rate of their own step. The two agree
for a constant learning rate but differ during warmup and cosine decay; we
follow the official BYOL order, in which the current lr_t scales the whole
trace. tests/test_optim.py checks both the hand-computed update and that it
differs from optax.lars under a changing learning rate.
"""
import functools
from typing import Any, Callable, Mapping, Optional, Union

import jax
import optax

ScalarOrSchedule = Union[float, Callable[[Any], Any]]

# Haiku names the kernel of hk.Linear and of every hk.ConvND 'w'.
_HAIKU_WEIGHT_NAME = 'w'


def _is_lars_weight(path, leaf) -> bool:
  """Whether one parameter gets weight decay and trust-ratio adaptation.

  Raises:
    ValueError: for a parameter of rank >= 2 not named 'w'; no module of
      this codebase makes one (its norms keep [C]-shaped scale and offset).
  """
  shape = tuple(leaf.shape)
  if len(shape) <= 1:
    # Biases ('b'), GroupNorm / LayerNorm / affine / BN scale and offset,
    # scalars: one value per channel.
    return False
  name = jax.tree_util.keystr(path[-1:], simple=True)
  if name == _HAIKU_WEIGHT_NAME:
    # A Linear/Conv kernel, even a degenerate one such as a Linear to a single
    # output ([D, 1]) or a 1x1 conv on one input channel ([1, 1, 1, C]).
    return True
  raise ValueError(
      f'lars_mask: parameter {jax.tree_util.keystr(path, simple=True, separator="/")} '
      f'of shape {shape} is neither a kernel named {_HAIKU_WEIGHT_NAME!r} nor '
      'a vector; say in optim.lars_mask whether it gets weight decay.')


def lars_mask(params) -> Any:
  """Which parameters get weight decay and LARS trust-ratio adaptation.

  The rule reads only shapes and the Haiku parameter name, never module names,
  so renamed or new modules (WSConv2D, GroupNorm, cross-replica BatchNorm,
  heads) are handled alike:

  * rank <= 1 (biases 'b', GN/LN/affine 'scale'/'offset', per-channel WS gains,
    scalars) -> False (excluded);
  * a leaf named 'w' (Haiku's kernel name in hk.Linear and hk.ConvND) of rank
    >= 2 -> True;
  * any other leaf of rank >= 2 -> ValueError (hk.BatchNorm's [1, 1, 1, C]
    scale, say: this codebase's norms (models/norms.py) never make one).

  This matches the official BYOL filter (exclude_bias_and_norm: leaf 'b' or a
  module whose name contains 'norm') on every Haiku ResNet and MLP, without
  depending on module names.

  Args:
    params: a parameter pytree (e.g. Haiku's {module: {name: array}}); leaves
      only need `.shape`, so jax.ShapeDtypeStruct trees work too.

  Returns:
    A pytree of Python bools with the structure of `params`, True where the
    parameter is decayed and trust-ratio adapted.
  """
  return jax.tree_util.tree_map_with_path(_is_lars_weight, params)


def module_mask(params, component: str) -> Any:
  """A mask selecting the parameters of one network component.

  Args:
    params: a Haiku parameter tree {module name: {param name: array}}.
    component: a top-level module name, e.g. 'predictor'.

  Returns:
    A tree shaped like `params` with a Python bool per leaf: True for the
    parameters of modules named `component` or `component/...` (e.g.
    'predictor' matches 'predictor/linear_0', not 'predictor2').
  """
  def select(path, leaf):
    del leaf
    name = jax.tree_util.keystr(path[:1], simple=True)
    return name == component or name.startswith(component + '/')
  return jax.tree_util.tree_map_with_path(select, params)


def make_optimizer(
    learning_rate_fn: ScalarOrSchedule,
    *,
    weight_decay: float,
    momentum: float = 0.9,
    trust_coefficient: float = 1e-3,
    eps: float = 0.0,
    nesterov: bool = False,
    lr_multipliers: Optional[Mapping[str, float]] = None,
) -> optax.GradientTransformation:
  """LARS with BYOL's exclusions, in the official BYOL order of operations.

  Defaults are BYOL's (paper section 3.3; official byol_experiment.py:
  momentum 0.9, eta 1e-3); BYOL's weight decay is 1.5e-6. `lars_mask` selects
  the parameters that get both weight decay and trust-ratio adaptation; the
  others get plain momentum SGD. See the module docstring for the exact rule
  and its difference from optax.lars.

  Args:
    learning_rate_fn: learning rate, a float or a schedule of the optimizer's
      step count (0 on the first update), e.g. functools.partial of
      schedules.learning_rate.
    weight_decay: L2 coefficient added to the gradient (>= 0).
    momentum: momentum of the trace, in [0, 1).
    trust_coefficient: LARS eta (> 0).
    eps: added to ||d|| in the trust-ratio denominator (the official code has
      none: 0).
    nesterov: Nesterov momentum (update mu_t' = a_t + momentum * mu_t); not in
      the official code.
    lr_multipliers: {component: factor}: the updates of that component's
      parameters (Haiku modules `component/...`, see module_mask) are scaled
      by factor, i.e. it trains with factor x the learning rate. None or {}
      (the paper and the official code): one learning rate for everything.

  Returns:
    An optax.GradientTransformation; its update needs `params`.

  Raises:
    ValueError: weight_decay < 0, momentum outside [0, 1),
      trust_coefficient <= 0, eps < 0 or a multiplier <= 0.
  """
  if not weight_decay >= 0:
    raise ValueError(f'make_optimizer: weight_decay must be >= 0, got '
                     f'{weight_decay}.')
  if not 0 <= momentum < 1:
    raise ValueError(f'make_optimizer: momentum must be in [0, 1), got '
                     f'{momentum}.')
  if not trust_coefficient > 0:
    raise ValueError(f'make_optimizer: trust_coefficient must be > 0, got '
                     f'{trust_coefficient}.')
  if not eps >= 0:
    raise ValueError(f'make_optimizer: eps must be >= 0, got {eps}.')
  multipliers = []
  for component, factor in sorted((lr_multipliers or {}).items()):
    if not factor > 0:
      raise ValueError(f'make_optimizer: the learning-rate multiplier of '
                       f'{component!r} must be > 0, got {factor}.')
    if factor != 1:
      multipliers.append(optax.masked(
          optax.scale(factor),
          mask=functools.partial(module_mask, component=component)))
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=lars_mask),
      # eta * ||w|| / (||d|| + eps), 1 where either norm is 0: the official
      # scale_by_lars's jnp.where guards.
      optax.masked(
          optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient,
                                     eps=eps),
          mask=lars_mask),
      # Momentum before the learning rate, as the official code (see above).
      optax.trace(decay=momentum, nesterov=nesterov),
      optax.scale_by_learning_rate(learning_rate_fn),
      *multipliers,
  )
