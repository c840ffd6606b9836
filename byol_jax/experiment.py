"""A built config (plan.build) -> a run's objects; compiles, derives nothing."""

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
  """The networks.Method `config.method` names, for the run's model."""
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
  """The run's schedules.learning_rate as fn(step)."""
  t, d = config.training, config.derived
  return functools.partial(
      schedules.learning_rate, base_learning_rate=t.base_learning_rate,
      global_batch_size=t.global_batch_size, total_steps=d.total_steps,
      warmup_steps=d.warmup_steps)


def target_ema_fn(config):
  """The run's schedules.target_ema as fn(step) -> tau."""
  return functools.partial(schedules.target_ema,
                           base_ema=config.training.base_ema,
                           total_steps=config.derived.total_steps)


def make_optimizer(config, learning_rate=None):
  """The run's LARS; `learning_rate` (a schedule) defaults to the run's."""
  return optim.make_optimizer(
      learning_rate or learning_rate_fn(config),
      weight_decay=config.training.weight_decay,
      trust_coefficient=config.training.trust_coefficient,
      lr_multipliers={
          'predictor': config.training.predictor_lr_multiplier})


def make_update(config, axis_name: Optional[str] = parallel.AXIS_NAME):
  """(method, optimizer, update) of the run; axis_name None for one device."""
  method = make_method(config, axis_name)
  optimizer = make_optimizer(config)
  update = ts.make_update(method, optimizer,
                          learning_rate_fn=learning_rate_fn(config),
                          target_ema_fn=target_ema_fn(config),
                          augment_fn=augment.augment_examples,
                          axis_name=axis_name)
  return method, optimizer, update


def sample_images(config, batch: int = 2) -> jax.Array:
  """float32 zeros [batch, image_size, image_size, 3] to initialise or trace."""
  size = config.data.image_size
  return jnp.zeros((batch, size, size, 3), jnp.float32)


def init_objects(config):
  """(method, optimizer) without schedules: restoring needs no step counts.

  The optimizer's state holds no learning rate, so a constant schedule gives the
  same initial state as the run's.
  """
  method = make_method(config, axis_name=None)
  return method, make_optimizer(config, learning_rate=lambda step: 0.)


def state_template(config):
  """The TrainState as jax.ShapeDtypeStruct leaves (to restore into)."""
  method, optimizer = init_objects(config)
  return jax.eval_shape(
      lambda: ts.init_train_state(method, optimizer, jax.random.PRNGKey(0),
                                  sample_images(config)))
