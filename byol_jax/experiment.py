"""From a config to the objects a run needs, and config validation.

Everything here is cheap and compiles nothing: `validate` runs first, so a bad
config fails in seconds with one line naming the field and the fix.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from byol_jax import configs
from byol_jax import optim
from byol_jax import schedules
from byol_jax import train_state as ts
from byol_jax.methods import byol
from byol_jax.methods import networks
from byol_jax.methods import simclr

METHODS = ('byol', 'simclr')
MODES = ('pretrain', 'linear_eval')


class ConfigError(ValueError):
  """A config value that cannot run; the message names the field and fix."""


def validate(config, *, check_steps: bool = True,
             process_count: Optional[int] = None,
             local_device_count: Optional[int] = None) -> None:
  """Checks a config before anything is built or compiled.

  Args:
    config: the experiment config (byol_jax/configs.py).
    process_count: hosts (default jax.process_count()).
    local_device_count: devices per host (default jax.local_device_count()).
    check_steps: also check the step counts (they may depend on the dataset
      size, known only after resolve_dataset).

  Raises:
    ConfigError naming the field and the fix.
  """
  process_count = process_count or jax.process_count()
  local_device_count = local_device_count or jax.local_device_count()
  if config.mode not in MODES:
    raise ConfigError(f'mode={config.mode!r}; use one of {", ".join(MODES)}.')
  if config.method not in METHODS:
    raise ConfigError(f'method={config.method!r}; use one of '
                      f'{", ".join(METHODS)}.')
  try:
    networks.validate_model_config(config.model)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  devices = process_count * local_device_count
  for field, batch in (('training.global_batch_size',
                        config.training.global_batch_size),
                       ('eval.global_batch_size', config.eval.global_batch_size)):
    if batch <= 0 or batch % devices:
      raise ConfigError(
          f'{field}={batch} does not divide over {process_count} host(s) x '
          f'{local_device_count} device(s) = {devices}; use a multiple of '
          f'{devices} (e.g. --config.{field}={max(1, batch // devices) * devices}).')
  training = config.training
  if check_steps and training.total_steps <= 0:
    raise ConfigError(
        f'training.total_steps={training.total_steps}: set it, or set '
        'training.num_epochs with a dataset of known size '
        '(data.num_train_examples).')
  if check_steps and not 0 <= training.warmup_steps <= training.total_steps:
    raise ConfigError(f'training.warmup_steps={training.warmup_steps} must be '
                      f'in [0, total_steps={training.total_steps}].')
  if not training.predictor_lr_multiplier > 0:
    raise ConfigError(
        f'training.predictor_lr_multiplier={training.predictor_lr_multiplier} '
        'must be > 0 (1: the paper\'s single learning rate).')
  if not 0. <= training.base_ema <= 1.:
    raise ConfigError(f'training.base_ema={training.base_ema} must be in '
                      '[0, 1].')
  if training.modified_init and config.model.encoder_norm != 'affine':
    raise ConfigError(
        'training.modified_init=True needs model.encoder_norm=affine (the BN '
        'layers are replaced by calibrated affine layers, paper §3.2).')
  if config.data.image_size <= 0:
    raise ConfigError(f'data.image_size={config.data.image_size} must be > 0.')


def resolve_dataset(config):
  """Opens the source and fills dataset-derived config fields.

  Returns:
    The data source. Raises ConfigError when it is missing or unprepared.
  """
  from byol_jax.data import sources  # pylint: disable=g-import-not-at-top
  try:
    source = sources.get_source(config.data.source,
                                data_dir=config.data.data_dir or None)
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(f'data.source={config.data.source!r}: {e}') from None
  with config.unlocked():
    if config.data.num_train_examples < 0:
      config.data.num_train_examples = source.num_examples(
          config.data.pretrain_split)
    if config.data.num_classes < 0:
      config.data.num_classes = source.num_classes
    configs.finalize(config)
  return source


def make_method(config, axis_name: Optional[str] = ts.AXIS_NAME):
  if config.method == 'byol':
    return byol.make_byol(config.model, config.data.num_classes,
                          axis_name=axis_name)
  return simclr.make_simclr(config.model, config.data.num_classes,
                            temperature=config.training.temperature,
                            axis_name=axis_name)


def learning_rate_fn(config):
  t = config.training
  return functools.partial(
      schedules.learning_rate, base_learning_rate=t.base_learning_rate,
      global_batch_size=t.global_batch_size, total_steps=t.total_steps,
      warmup_steps=t.warmup_steps)


def target_ema_fn(config):
  return functools.partial(schedules.target_ema,
                           base_ema=config.training.base_ema,
                           total_steps=config.training.total_steps)


def make_optimizer(config):
  return optim.make_optimizer(
      learning_rate_fn(config), weight_decay=config.training.weight_decay,
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


def state_template(config):
  """ShapeDtypeStructs of the TrainState (for restoring), no compute."""
  method, optimizer, _ = make_update(config, axis_name=None)
  return jax.eval_shape(
      lambda: ts.init_train_state(method, optimizer, jax.random.PRNGKey(0),
                                  sample_images(config)))
