"""From a built config (byol_jax/plan.py) to the objects a run needs.

Everything here is cheap and compiles nothing. The config has been validated
and its derived values (config.derived: step counts, classes) filled by
plan.build; nothing here re-derives or re-validates them.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from byol_jax import optim
from byol_jax import schedules
from byol_jax import train_state as ts
from byol_jax.methods import byol
from byol_jax.methods import networks
from byol_jax.methods import simclr

def make_method(config, axis_name: Optional[str] = ts.AXIS_NAME):
  num_classes = config.derived.num_classes
  if config.method == 'byol':
    return byol.make_byol(config.model, num_classes, axis_name=axis_name)
  return simclr.make_simclr(config.model, num_classes,
                            temperature=config.training.temperature,
                            axis_name=axis_name)


def learning_rate_fn(config):
  t, d = config.training, config.derived
  return functools.partial(
      schedules.learning_rate, base_learning_rate=t.base_learning_rate,
      global_batch_size=t.global_batch_size, total_steps=d.total_steps,
      warmup_steps=d.warmup_steps)


def target_ema_fn(config):
  return functools.partial(schedules.target_ema,
                           base_ema=config.training.base_ema,
                           total_steps=config.derived.total_steps)


def make_optimizer(config, learning_rate=None):
  """LARS of the config; `learning_rate` (a schedule) defaults to the run's."""
  return optim.make_optimizer(
      learning_rate or learning_rate_fn(config),
      weight_decay=config.training.weight_decay,
      trust_coefficient=config.training.trust_coefficient,
      lr_multipliers={
          'predictor': config.training.predictor_lr_multiplier})


def byol_augment(keys: jax.Array, images: jax.Array, view: int) -> jax.Array:
  """BYOL's on-device augmentation with one key per example (ts.AugmentFn)."""
  from byol_jax.data import augment  # pylint: disable=g-import-not-at-top
  one = lambda k, x: augment.augment_view(k, x[None], view=view)[0]
  return jax.vmap(one)(keys, images)


def make_update(config, axis_name: Optional[str] = ts.AXIS_NAME):
  method = make_method(config, axis_name)
  optimizer = make_optimizer(config)
  update = ts.make_update(method, optimizer,
                          learning_rate_fn=learning_rate_fn(config),
                          target_ema_fn=target_ema_fn(config),
                          augment_fn=byol_augment, axis_name=axis_name)
  return method, optimizer, update


def sample_images(config, batch: int = 2) -> jax.Array:
  size = config.data.image_size
  return jnp.zeros((batch, size, size, 3), jnp.float32)


def init_objects(config):
  """(method, optimizer) for initialising a TrainState, without schedules.

  The optimizer's state holds no learning rate, so a constant schedule gives
  the same initial state (and structure) as the run's: restoring and the
  random-encoder baseline then need only the model, the method and the class
  count, not the run's step counts.
  """
  method = make_method(config, axis_name=None)
  return method, make_optimizer(config, learning_rate=lambda step: 0.)


def state_template(config):
  """ShapeDtypeStructs of the TrainState (for restoring), no compute."""
  method, optimizer = init_objects(config)
  return jax.eval_shape(
      lambda: ts.init_train_state(method, optimizer, jax.random.PRNGKey(0),
                                  sample_images(config)))
