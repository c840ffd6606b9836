"""One training step, top to bottom, as the official byol_experiment.py.

Randomness: the step's key is fold_in(state.rng, step), each example's key
fold_in(step key, global example index) (lax.axis_index is global under
multi-controller pmap): 1-device and 8-device updates of a batch are equal.
"""

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from byol_jax import augment
from byol_jax import methods
from byol_jax import optim
from byol_jax import schedules
from byol_jax.hosts import parallel
from byol_jax.methods import byol
from byol_jax.methods import networks
from byol_jax.methods import simclr


class TrainState(NamedTuple):
  """All mutable training state, one pytree (checkpointed whole).

  step: int32 scalar, updates applied; online_state: BN averages or {};
  target_*: the online trees restricted to networks.TARGET_MODULES ({} for
  SimCLR); opt_state: LARS's, of the online params.
  """

  step: jax.Array
  rng: jax.Array
  online_params: Any
  online_state: Any
  target_params: Any
  target_state: Any
  opt_state: Any


def make_method(
    config, num_classes: int, axis_name: Optional[str] = parallel.AXIS_NAME
) -> networks.Method:
  """The networks.Method of `config.method` (validated by plan.build)."""
  if config.method == methods.SIMCLR:
    return simclr.make_simclr(
        config.model,
        num_classes,
        temperature=config.training.temperature,
        axis_name=axis_name,
    )
  return byol.make_byol(config.model, num_classes, axis_name=axis_name)


def learning_rate_fn(training, plan):
  """schedules.learning_rate as fn(step): training inputs, a PretrainPlan."""
  return functools.partial(
      schedules.learning_rate,
      base_learning_rate=training.base_learning_rate,
      global_batch_size=training.global_batch_size,
      total_steps=plan.total_steps,
      warmup_steps=plan.warmup_steps,
  )


def _lars(t, learning_rate):
  return optim.make_optimizer(
      learning_rate,
      weight_decay=t.weight_decay,
      trust_coefficient=t.trust_coefficient,
      lr_multipliers={'predictor': t.predictor_lr_multiplier},
  )


def sample_images(config, batch: int = 2) -> jax.Array:
  """float32 zeros [batch, image_size, image_size, 3] to initialise or trace."""
  size = config.data.image_size
  return jnp.zeros((batch, size, size, 3), jnp.float32)


def init_train_state(
    method: networks.Method,
    optimizer: optax.GradientTransformation,
    rng: jax.Array,
    images: jax.Array,
) -> TrainState:
  """A TrainState at step 0 (target = copy of online), unreplicated; images
  [B, H, W, 3] fix the input shape (sample_images)."""
  init_rng, base_rng = jax.random.split(rng)
  trees = method.init(init_rng, images)
  return TrainState(jnp.int32(0), base_rng, *trees, optimizer.init(trees[0]))


def init_objects(config, num_classes: int):
  """(method, optimizer) without schedules (LARS's state holds no rate)."""
  method = make_method(config, num_classes, axis_name=None)
  return method, _lars(config.training, lambda step: 0.0)


def state_template(config, num_classes: int) -> TrainState:
  """The TrainState as jax.ShapeDtypeStruct leaves (to restore into)."""
  init = functools.partial(init_train_state, *init_objects(config, num_classes))
  return jax.eval_shape(init, jax.random.PRNGKey(0), sample_images(config))


def example_keys(
    rng: jax.Array, batch_size: int, axis_name: Optional[str]
) -> jax.Array:
  """[batch_size] keys fold_in(rng, global example index) over `axis_name`."""
  index = jnp.arange(batch_size)
  if axis_name is not None:
    index = jax.lax.axis_index(axis_name) * batch_size + index
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(index)


def loss_fn(
    method: networks.Method,
    online_params,
    online_state,
    target_params,
    target_state,
    views,
    labels,
):
  """(method loss + classifier loss, (online_state, target_state, metrics));
  views: two augmented [B, H, W, 3] batches; labels [B] int, < 0 unlabelled."""
  online, online_state = method.online(online_params, online_state, views)
  # The target forward in training mode (batch statistics), as the official
  # code; the method's loss stops its gradient.
  target, target_state = method.target(target_params, target_state, views)
  loss, metrics = method.loss(online, target)
  classif, monitors = networks.classifier_and_monitors(online[0], labels)
  metrics = jax.lax.stop_gradient(dict(monitors, loss=loss, **metrics))
  return loss + classif, (online_state, target_state, metrics)


def make_update(
    config,
    plan,
    axis_name: Optional[str] = parallel.AXIS_NAME,
    *,
    augment_fn=augment.augment_examples,
):
  """(method, optimizer, update) of the run.

  Args:
    config: the run's inputs (plan.build's Run.config).
    plan: its plan.PretrainPlan. With training.accumulation_steps N > 1 the
      device's batch is N micro-batches (lax.scan) whose gradients are
      averaged before the pmean: the whole batch's gradient for GN, LN or no
      norm (the paper's point, §3.3), ghost BN for BN.
    axis_name: the step's collective axis, or None on one device.
    augment_fn: (keys [B], images [B, H, W, 3] in [0, 1], view 1|2) ->
      augmented, normalised images (tests swap in a cheaper one).

  Returns:
    method, optimizer and the pure update(state, batch) -> (state, metrics):
    batch is this device's 'view1', 'view2' [B, H, W, 3] float in [0, 1] and
    'label' [B] int; metrics float32 scalars, pmean'd.
  """
  method = make_method(config, plan.num_classes, axis_name)
  learning_rate = learning_rate_fn(config.training, plan)
  optimizer = _lars(config.training, learning_rate)
  base_ema, total_steps = config.training.base_ema, plan.total_steps
  micro = config.training.accumulation_steps
  grad_fn = jax.grad(functools.partial(loss_fn, method), has_aux=True)

  def grads_of(state: TrainState, views, labels):
    """grad_fn of the batch; micro > 1: the mean over its micro-batches."""
    params, target = state.online_params, state.target_params
    states = (state.online_state, state.target_state)
    if micro == 1:
      return grad_fn(params, states[0], target, states[1], views, labels)

    def accumulate(carry, inputs):
      grads, (online_state, target_state) = carry
      g, (*new, metrics) = grad_fn(
          params, online_state, target, target_state, *inputs
      )
      return (optax.tree.add(grads, g), tuple(new)), metrics

    split = lambda x: x.reshape((micro, -1) + x.shape[1:])
    (grads, states), metrics = jax.lax.scan(
        accumulate,
        (optax.tree.zeros_like(params), states),
        jax.tree.map(split, (views, labels)),
    )
    metrics = jax.tree.map(lambda m: m.mean(0), metrics)
    return optax.tree.scale(1 / micro, grads), (*states, metrics)

  def update(state: TrainState, batch):
    rng1, rng2 = jax.random.split(jax.random.fold_in(state.rng, state.step))
    keys = lambda rng: example_keys(rng, batch['view1'].shape[0], axis_name)
    # Augmented whole (per-example keys): micro-batches see the same views.
    views = (
        augment_fn(keys(rng1), batch['view1'], 1),
        augment_fn(keys(rng2), batch['view2'], 2),
    )
    grads, (online_state, target_state, metrics) = grads_of(
        state, views, batch['label']
    )
    if axis_name is not None:
      grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
    updates, opt_state = optimizer.update(
        grads, state.opt_state, state.online_params
    )
    online_params = optax.apply_updates(state.online_params, updates)
    tau = schedules.target_ema(
        state.step, base_ema=base_ema, total_steps=total_steps
    )
    # The target moves after the online update, towards the new online
    # weights (official code order).
    target_params = method.target_update(
        state.target_params, online_params, tau
    )
    metrics = dict(
        metrics,
        lr=learning_rate(state.step),
        tau=jnp.asarray(tau, jnp.float32),
        grad_norm=optax.tree.norm(grads),
    )
    new_state = state._replace(
        step=state.step + 1,
        online_params=online_params,
        online_state=online_state,
        target_params=target_params,
        target_state=target_state,
        opt_state=opt_state,
    )
    return new_state, metrics

  return method, optimizer, update


def pmap_update(update, devices=None):
  """`update` as a parallel.device_program, the state donated."""
  return parallel.device_program(
      update, axis_name=parallel.AXIS_NAME, devices=devices, donate_argnums=(0,)
  )
