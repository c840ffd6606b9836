"""LARS (You et al., 2017) as BYOL uses it, from optax primitives.

Per parameter w with gradient g, in the official order (byol/utils/
optimizers.py: add_weight_decay -> scale_by_lars -> scale(-lr)):

  d_t  = g_t + wd * w_t                    (masked: d_t = g_t)
  a_t  = d_t * eta * ||w_t|| / ||d_t||     (masked, or a norm 0: a_t = d_t)
  mu_t = momentum * mu_{t-1} + a_t
  w_{t+1} = w_t - lr_t * mu_t

Ours because the order is the research's: `optax.lars` (0.2.8) scales by the
rate before the momentum trace, which differs during warm-up and decay.
"""

from typing import Any, Callable, Mapping, Optional, Union

import jax
import optax


def lars_mask(params) -> Any:
  """Bools like `params`: weight decay and trust ratio? From shapes (BYOL §3.3
  excludes biases and norm parameters): rank <= 1 False, a kernel 'w' True,
  another leaf of rank >= 2 ValueError."""

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


def _module_mask(component: str) -> Callable[[Any], Any]:
  """params -> True for the parameters of module `component[/...]`."""
  top = lambda path: jax.tree_util.keystr(path[:1], simple=True).split('/')[0]
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: top(path) == component, params
  )


def make_optimizer(
    learning_rate_fn: Union[float, Callable[[Any], Any]],
    *,
    weight_decay: float,
    momentum: float = 0.9,
    trust_coefficient: float = 1e-3,
    eps: float = 0.0,
    nesterov: bool = False,
    lr_multipliers: Optional[Mapping[str, float]] = None,
) -> optax.GradientTransformation:
  """LARS with BYOL's exclusions (lars_mask) and defaults (§3.3).

  Args:
    learning_rate_fn: a float, or a schedule of the optimizer's step count
      (0 on the first update), e.g. schedules.learning_rate.
    weight_decay: >= 0, added to the gradient as wd * w (BYOL: 1.5e-6).
    momentum: in [0, 1).
    trust_coefficient: LARS eta, > 0.
    eps: >= 0, added to ||d|| in the trust ratio (official: 0).
    nesterov: Nesterov momentum (not in the official code).
    lr_multipliers: {top-level module: factor > 0} scaling its updates.

  Returns:
    An optax.GradientTransformation whose update needs `params`; ValueError
    for an argument out of range.
  """
  checks = [
      ('weight_decay', weight_decay, weight_decay >= 0, '>= 0'),
      ('momentum', momentum, 0 <= momentum < 1, 'in [0, 1)'),
      ('trust_coefficient', trust_coefficient, trust_coefficient > 0, '> 0'),
      ('eps', eps, eps >= 0, '>= 0'),
  ]
  multipliers = sorted((lr_multipliers or {}).items())
  for component, factor in multipliers:
    field = f'the learning-rate multiplier of {component!r}'
    checks.append((field, factor, factor > 0, '> 0'))
  for field, value, ok, allowed in checks:
    if not ok:
      raise ValueError(
          f'make_optimizer: {field} must be {allowed}, got {value}.'
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
      *(
          optax.masked(optax.scale(factor), _module_mask(component))
          for component, factor in multipliers
          if factor != 1
      ),
  )
