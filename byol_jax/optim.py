"""LARS (You et al., 2017) as BYOL uses it, from optax primitives.

BYOL §3.3: weight decay 1.5e-6, "excluding the biases and batch normalization
parameters from both LARS adaptation and weight decay"; with GN + WS the
excluded set is biases and every norm's scale and offset, which `lars_mask`
finds from the parameter shapes, not module names.

Per parameter w with gradient g, in the official order (byol/utils/
optimizers.py: add_weight_decay -> scale_by_lars -> scale(-lr)):

  d_t  = g_t + wd * w_t                                  (masked: d_t = g_t)
  a_t  = d_t * eta * ||w_t|| / ||d_t||                   (masked: a_t = d_t)
         (ratio taken as 1 when ||w_t|| or ||d_t|| is 0)
  mu_t = momentum * mu_{t-1} + a_t
  w_{t+1} = w_t - lr_t * mu_t

`optax.lars` (0.2.8) scales by the learning rate *before* the momentum trace,
so past steps keep their own step's rate: the same for a constant rate,
different during warm-up and cosine decay. We follow the official order
(tests/test_optim.py checks both the hand-computed update and the difference).
"""

import functools
from typing import Any, Callable, Mapping, Optional, Union

import jax
import optax

ScalarOrSchedule = Union[float, Callable[[Any], Any]]


def lars_mask(params) -> Any:
  """True where a parameter gets weight decay and the LARS trust ratio.

  From shapes and the Haiku parameter name only: rank <= 1 (biases, every
  norm's scale/offset, scalars) -> False; a rank >= 2 kernel 'w' -> True (a
  degenerate [D, 1] Linear too); another rank >= 2 leaf -> ValueError. On every
  Haiku ResNet and MLP this equals the official exclude_bias_and_norm (leaf 'b'
  or a module named '*norm*') without depending on module names.

  Args:
    params: a parameter pytree; leaves need only `.shape`.

  Returns:
    A pytree of Python bools with the structure of `params`.
  """

  def is_weight(path, leaf):
    if len(leaf.shape) <= 1:
      return False
    if jax.tree_util.keystr(path[-1:], simple=True) == 'w':
      return True
    raise ValueError(
        f'lars_mask: parameter '
        f'{jax.tree_util.keystr(path, simple=True, separator="/")} of shape '
        f"{tuple(leaf.shape)} is neither a kernel named 'w' nor a vector; "
        'say in optim.lars_mask whether it gets weight decay.'
    )

  return jax.tree_util.tree_map_with_path(is_weight, params)


def _module_mask(params, component: str) -> Any:
  """True for the parameters of module `component` or `component/...`."""

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
  """LARS with BYOL's exclusions, in the official order (module docstring).

  Defaults are BYOL's (§3.3; byol_experiment.py: momentum 0.9, eta 1e-3).

  Args:
    learning_rate_fn: a float, or a schedule of the optimizer's step count (0 on
      the first update), e.g. functools.partial(schedules.learning_rate, ...).
    weight_decay: L2 coefficient added to the gradient, >= 0 (BYOL: 1.5e-6).
    momentum: in [0, 1).
    trust_coefficient: LARS eta, > 0.
    eps: added to ||d|| in the trust ratio's denominator (official: 0).
    nesterov: Nesterov momentum (not in the official code).
    lr_multipliers: {component: factor}: that component's updates scaled by
      factor. None or {}: one rate for all (paper, official).

  Returns:
    An optax.GradientTransformation whose update needs `params`.

  Raises:
    ValueError: weight_decay < 0, momentum outside [0, 1),
      trust_coefficient <= 0, eps < 0 or a multiplier <= 0.
  """
  if not weight_decay >= 0:
    raise ValueError(
        f'make_optimizer: weight_decay must be >= 0, got ' f'{weight_decay}.'
    )
  if not 0 <= momentum < 1:
    raise ValueError(
        f'make_optimizer: momentum must be in [0, 1), got ' f'{momentum}.'
    )
  if not trust_coefficient > 0:
    raise ValueError(
        f'make_optimizer: trust_coefficient must be > 0, got '
        f'{trust_coefficient}.'
    )
  if not eps >= 0:
    raise ValueError(f'make_optimizer: eps must be >= 0, got {eps}.')
  multipliers = []
  for component, factor in sorted((lr_multipliers or {}).items()):
    if not factor > 0:
      raise ValueError(
          f'make_optimizer: the learning-rate multiplier of '
          f'{component!r} must be > 0, got {factor}.'
      )
    if factor != 1:
      multipliers.append(
          optax.masked(
              optax.scale(factor),
              mask=functools.partial(_module_mask, component=component),
          )
      )
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=lars_mask),
      # eta * ||w|| / (||d|| + eps), 1 where either norm is 0: the official
      # scale_by_lars's jnp.where guards.
      optax.masked(
          optax.scale_by_trust_ratio(
              trust_coefficient=trust_coefficient, eps=eps
          ),
          mask=lars_mask,
      ),
      # Momentum before the learning rate, as the official code (see above).
      optax.trace(decay=momentum, nesterov=nesterov),
      optax.scale_by_learning_rate(learning_rate_fn),
      *multipliers,
  )
