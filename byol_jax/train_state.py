"""TrainState, its initialisation, and the update step.

`make_update` is written against a collective axis name: gradients and metrics
are pmean'd over it, cross-replica BN and InfoNCE's negatives use it.

Randomness: `state.rng` is a fixed base key; the step's key is
fold_in(rng, step), each example's augmentation key fold_in(step key, global
example index) (lax.axis_index is global under multi-controller pmap). A
step's result thus depends only on (seed, step, global batch), not on how the
batch is split over devices: 1-device and 8-device updates are equal.
"""

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from byol_jax import parallel
from byol_jax.methods import networks

AugmentFn = Callable[[jax.Array, jax.Array, int], jax.Array]


class TrainState(NamedTuple):
  """All mutable training state, one pytree (checkpointed whole).

  Attributes:
    step: int32 scalar, the number of updates applied.
    rng: the base PRNG key.
    online_params, online_state: the online network's Haiku parameters and
      state (BN moving averages; {} without BN).
    target_params, target_state: the online trees restricted to
      networks.TARGET_MODULES; {} without a target network (SimCLR).
    opt_state: the optimizer's state of the online parameters.
  """
  step: jax.Array
  rng: jax.Array
  online_params: Any
  online_state: Any
  target_params: Any
  target_state: Any
  opt_state: Any


def init_train_state(method: networks.Method,
                     optimizer: optax.GradientTransformation,
                     rng: jax.Array, sample_images: jax.Array) -> TrainState:
  """A TrainState at step 0 (target = copy of online), unreplicated.

  Args:
    method: from methods.byol.make_byol / methods.simclr.make_simclr.
    optimizer: from optim.make_optimizer.
    rng: a PRNG key (the run's seed).
    sample_images: [B, H, W, C] images fixing the input shape.
  """
  init_rng, base_rng = jax.random.split(rng)
  params, state, target_params, target_state = method.init(init_rng,
                                                           sample_images)
  return TrainState(step=jnp.zeros((), jnp.int32), rng=base_rng,
                    online_params=params, online_state=state,
                    target_params=target_params, target_state=target_state,
                    opt_state=optimizer.init(params))


def example_keys(rng: jax.Array, batch_size: int,
                 axis_name: Optional[str]) -> jax.Array:
  """[batch_size] keys fold_in(rng, global example index) over `axis_name`."""
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch_size
  index = offset + jnp.arange(batch_size)
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(index)


def ema_update(target_params, online_params, tau):
  """target <- tau * target + (1 - tau) * online (BYOL eq. 1), per module."""
  return {
      name: jax.tree.map(lambda t, o: tau * t + (1. - tau) * o, module,
                         online_params[name])
      for name, module in target_params.items()
  }


def make_update(method: networks.Method,
                optimizer: optax.GradientTransformation, *,
                learning_rate_fn: Callable[[jax.Array], jax.Array],
                target_ema_fn: Callable[[jax.Array], jax.Array],
                augment_fn: AugmentFn,
                axis_name: Optional[str] = parallel.AXIS_NAME):
  """Builds the pure update(state, batch, rng) -> (state, metrics).

  Args:
    method: the method's init/loss.
    optimizer: of the online parameters (LARS).
    learning_rate_fn: step -> lr, for logging (the optimizer holds its own).
    target_ema_fn: step -> tau (schedules.target_ema).
    augment_fn: (keys [B], images [B, H, W, C] in [0, 1], view 1|2) ->
      augmented, normalised images.
    axis_name: the collective axis of the step, or None on one device.

  Returns:
    update; batch is this device's part: 'view1', 'view2' [B, H, W, C] float
    in [0, 1] and 'label' [B] int.
  """

  def update(state: TrainState, batch: Dict[str, jax.Array],
             rng: jax.Array) -> Tuple[TrainState, Dict[str, jax.Array]]:
    rng1, rng2 = jax.random.split(rng)
    batch_size = batch['view1'].shape[0]
    views = (augment_fn(example_keys(rng1, batch_size, axis_name),
                        batch['view1'], 1),
             augment_fn(example_keys(rng2, batch_size, axis_name),
                        batch['view2'], 2))
    grad_fn = jax.grad(method.loss, has_aux=True)
    grads, (online_state, target_state, metrics) = grad_fn(
        state.online_params, state.online_state, state.target_params,
        state.target_state, views, batch['label'])
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      metrics = jax.lax.pmean(metrics, axis_name)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.online_params)
    online_params = optax.apply_updates(state.online_params, updates)
    tau = target_ema_fn(state.step)
    # The EMA uses the freshly updated online weights (official code order).
    target_params = ema_update(state.target_params, online_params, tau)
    metrics = dict(metrics, lr=learning_rate_fn(state.step),
                   tau=jnp.asarray(tau, jnp.float32),
                   grad_norm=optax.tree.norm(grads))
    new_state = TrainState(step=state.step + 1, rng=state.rng,
                           online_params=online_params,
                           online_state=online_state,
                           target_params=target_params,
                           target_state=target_state, opt_state=opt_state)
    return new_state, metrics

  return update


def step_rng(state: TrainState) -> jax.Array:
  """The step's PRNG key, fold_in(state.rng, state.step)."""
  return jax.random.fold_in(state.rng, state.step)


def pmap_update(update, axis_name: str = parallel.AXIS_NAME, devices=None):
  """fn(replicated state, batch [devices, per_device, ...]) -> (state, metrics).

  A parallel.device_program of `update` (made with the same axis_name); the
  state is donated; metrics have a leading device axis.
  """
  def step(state, batch):
    return update(state, batch, step_rng(state))
  return parallel.device_program(step, axis_name=axis_name, devices=devices,
                                 donate_argnums=(0,))

