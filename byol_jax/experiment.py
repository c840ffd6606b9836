"""From a built config (byol_jax/plan.py) to the objects a run needs.

Everything here is cheap and compiles nothing. The config has been validated
and its derived values (config.derived: step counts, classes) filled by
plan.build; nothing here re-derives or re-validates them.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from byol_jax import methods
from byol_jax import optim
from byol_jax import parallel
from byol_jax import schedules
from byol_jax import train_state as ts
from byol_jax.data import augment
from byol_jax.methods import byol
from byol_jax.methods import networks
from byol_jax.methods import simclr

def make_method(config, axis_name: Optional[str] = parallel.AXIS_NAME
                ) -> networks.Method:
  """The method `config.method` names, built for the run's model.

  Args:
    config: a built config (method, model, training.temperature and
      derived.num_classes are read).
    axis_name: the collective axis (cross-replica BN, SimCLR's negatives),
      or None outside a device program.

  Returns:
    A networks.Method.

  Raises:
    ValueError: config.method is not one of methods.METHODS (plan.build
      refuses such a config first).
  """
  num_classes = config.derived.num_classes
  if config.method == methods.BYOL:
    return byol.make_byol(config.model, num_classes, axis_name=axis_name)
  if config.method == methods.SIMCLR:
    return simclr.make_simclr(config.model, num_classes,
                              temperature=config.training.temperature,
                              axis_name=axis_name)
  raise ValueError(f'method={config.method!r}: use one of '
                   f'{", ".join(methods.METHODS)}.')


def learning_rate_fn(config):
  """The run's learning-rate schedule (schedules.learning_rate).

  Args:
    config: a built config (training.base_learning_rate, global_batch_size
      and derived.total_steps, warmup_steps are read).

  Returns:
    fn(step) -> float32 scalar learning rate.
  """
  t, d = config.training, config.derived
  return functools.partial(
      schedules.learning_rate, base_learning_rate=t.base_learning_rate,
      global_batch_size=t.global_batch_size, total_steps=d.total_steps,
      warmup_steps=d.warmup_steps)


def target_ema_fn(config):
  """The run's target decay schedule (schedules.target_ema).

  Args:
    config: a built config (training.base_ema, derived.total_steps).

  Returns:
    fn(step) -> tau, a float scalar in [base_ema, 1].
  """
  return functools.partial(schedules.target_ema,
                           base_ema=config.training.base_ema,
                           total_steps=config.derived.total_steps)


def make_optimizer(config, learning_rate=None):
  """LARS of the config (optim.make_optimizer).

  Args:
    config: a built config (training.weight_decay, trust_coefficient,
      predictor_lr_multiplier; the schedule's fields unless given).
    learning_rate: a schedule fn(step) -> lr; default the run's
      (learning_rate_fn).

  Returns:
    An optax.GradientTransformation of the online parameters.
  """
  return optim.make_optimizer(
      learning_rate or learning_rate_fn(config),
      weight_decay=config.training.weight_decay,
      trust_coefficient=config.training.trust_coefficient,
      lr_multipliers={
          'predictor': config.training.predictor_lr_multiplier})


def make_update(config, axis_name: Optional[str] = parallel.AXIS_NAME):
  """The run's method, optimizer and update step (train_state.make_update).

  Args:
    config: a built config.
    axis_name: the collective axis of the device program (parallel.AXIS_NAME),
      or None for a single-device step (train_state.jit_update).

  Returns:
    (networks.Method, optax.GradientTransformation, update(state, batch,
    rng) -> (state, metrics)); the step augments each view with
    augment.augment_examples.
  """
  method = make_method(config, axis_name)
  optimizer = make_optimizer(config)
  update = ts.make_update(method, optimizer,
                          learning_rate_fn=learning_rate_fn(config),
                          target_ema_fn=target_ema_fn(config),
                          augment_fn=augment.augment_examples,
                          axis_name=axis_name)
  return method, optimizer, update


def sample_images(config, batch: int = 2) -> jax.Array:
  """Zero images of the run's input shape (to initialise or trace a network).

  Args:
    config: a config (data.image_size is read).
    batch: images.

  Returns:
    float32 [batch, image_size, image_size, 3] zeros.
  """
  size = config.data.image_size
  return jnp.zeros((batch, size, size, 3), jnp.float32)


def init_objects(config):
  """(method, optimizer) for initialising a TrainState, without schedules.

  The optimizer's state holds no learning rate, so a constant schedule gives
  the same initial state (and structure) as the run's: restoring and the
  random-encoder baseline then need only the model, the method and the class
  count, not the run's step counts.

  Args:
    config: a config (method, model, training, derived.num_classes).

  Returns:
    (networks.Method, optax.GradientTransformation).
  """
  method = make_method(config, axis_name=None)
  return method, make_optimizer(config, learning_rate=lambda step: 0.)


def state_template(config):
  """The TrainState's shapes and dtypes (for restoring), no compute.

  Args:
    config: a config (as init_objects, and data.image_size).

  Returns:
    A TrainState of jax.ShapeDtypeStruct leaves, unreplicated.
  """
  method, optimizer = init_objects(config)
  return jax.eval_shape(
      lambda: ts.init_train_state(method, optimizer, jax.random.PRNGKey(0),
                                  sample_images(config)))
