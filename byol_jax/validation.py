"""Validation of a config's input fields: one line per bad value.

Every field a run reads is checked here once, at start-up (plan.build),
before any data is opened or anything compiles. A bad value raises
ConfigError, whose one-line message names the field, the value and what is
allowed; main.py prints it and exits 2.
"""

import math

from byol_jax.data import splits

BYOL = 'byol'  # the method whose online network has a predictor
METHODS = (BYOL, 'simclr')
MODES = ('pretrain', 'linear_eval')
IN_MEMORY_ON = ('device', 'host')


class ConfigError(ValueError):
  """A config value that cannot run; the message names the field and fix."""


def fail(field: str, value, allowed: str):
  raise ConfigError(f'{field}={value!r}: {allowed}')


def check(ok: bool, field: str, value, allowed: str) -> None:
  if not ok:
    fail(field, value, allowed)


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _positive_int(section, name, field=None, *, auto=''):
  """Checks a positive integer field; `auto` describes what -1 means."""
  value = section[name]
  field = field or name
  if auto and value == -1:
    return
  check(_is_int(value) and value > 0, field, value,
        'must be a positive integer' + (f' (or -1: {auto})' if auto else '')
        + '.')


def _number(value, field: str, low: float, allowed: str, *,
            above: bool = True) -> None:
  """A finite number > low (or >= low with above=False)."""
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and
        math.isfinite(value) and (value > low if above else value >= low))
  check(ok, field, value, allowed)


def check_batch(field: str, batch, topology) -> None:
  """Raises unless `batch` is a positive multiple of the device count."""
  devices = topology.device_count
  if not _is_int(batch) or batch <= 0 or batch % devices:
    hint = max(1, (batch if _is_int(batch) else 0) // devices) * devices
    hint = max(hint, devices)
    fail(field, batch,
         f'must be a positive multiple of the {devices} devices '
         f'({topology.process_count} host(s) x {topology.local_device_count} '
         f'device(s)), e.g. --config.{field}={hint}.')


def validate_inputs(config, mode: str) -> None:
  """Checks every input field that needs neither data nor devices.

  Args:
    config: the experiment config of inputs (byol_jax/configs.py).
    mode: 'pretrain' or 'linear_eval' (fields that mode reads are checked).

  Raises:
    ConfigError naming the first bad field, its value and what is allowed.
  """
  from byol_jax.methods import networks  # pylint: disable=g-import-not-at-top
  check(config.method in METHODS, 'method', config.method,
        f'use one of {", ".join(METHODS)}.')
  check(_is_int(config.seed) and config.seed >= 0, 'seed', config.seed,
        'must be an integer >= 0.')
  model = config.model
  check(_is_int(model.gn_groups) and model.gn_groups >= 1, 'model.gn_groups',
        model.gn_groups, 'must be an integer >= 1 (the paper uses 16).')
  _number(model.width_multiplier, 'model.width_multiplier', 0.,
          'must be a finite number > 0.')
  for name in ('projector_hidden_size', 'projector_output_size',
               'predictor_hidden_size'):
    _positive_int(model, name, f'model.{name}')
  check(0 <= model.bn_decay < 1, 'model.bn_decay', model.bn_decay,
        'must be in [0, 1) (the official value is 0.9).')
  try:
    networks.validate_model_config(model)
  except ValueError as e:
    raise ConfigError(str(e)) from None

  data = config.data
  _positive_int(data, 'image_size', 'data.image_size')
  check(0 < data.min_crop_area <= 1, 'data.min_crop_area', data.min_crop_area,
        'must be in (0, 1] (BYOL: 0.08).')
  check(_is_int(data.held_out_examples) and data.held_out_examples >= 0,
        'data.held_out_examples', data.held_out_examples,
        'must be an integer >= 0 (0: hold nothing out).')
  check(_is_int(data.max_in_memory_mb) and data.max_in_memory_mb >= 0,
        'data.max_in_memory_mb', data.max_in_memory_mb,
        'must be an integer >= 0 (MiB of decoded uint8 images held in '
        'memory; 0: folders stream through tf.data).')
  check(_is_int(data.cache_side) and data.cache_side >= 0,
        'data.cache_side', data.cache_side,
        'must be an integer >= 0 (0: the images\' own size).')
  check(data.in_memory_on in IN_MEMORY_ON, 'data.in_memory_on',
        data.in_memory_on, f'use one of {", ".join(IN_MEMORY_ON)}.')
  check(isinstance(data.cache_dir, str) and '://' not in data.cache_dir,
        'data.cache_dir', data.cache_dir,
        "must be a local directory path ('' for the default); the cache "
        'of decoded folders is not written to gs:// or other URLs.')
  check(data.num_classes == -1 or (_is_int(data.num_classes) and
                                   data.num_classes > 0),
        'data.num_classes', data.num_classes,
        'must be > 0, or -1 to take it from the dataset.')
  if mode == 'pretrain':
    check(bool(data.source), 'data.source', data.source,
          'name a dataset: tfds:<name> | folder:<path> | digits | '
          'synthetic[:<side>].')

  t = config.training
  _positive_int(t, 'total_steps', 'training.total_steps',
                auto='derive it from training.num_epochs')
  if t.total_steps == -1:
    check(_is_int(t.num_epochs) and t.num_epochs > 0, 'training.num_epochs',
          t.num_epochs, 'must be a positive integer (or set '
          'training.total_steps).')
  _positive_int(t, 'max_steps', 'training.max_steps',
                auto='no early stop')
  check(_is_int(t.warmup_epochs) and t.warmup_epochs >= 0,
        'training.warmup_epochs', t.warmup_epochs, 'must be an integer >= 0.')
  check(t.warmup_steps == -1 or (_is_int(t.warmup_steps) and
                                 t.warmup_steps >= 0),
        'training.warmup_steps', t.warmup_steps,
        'must be >= 0, or -1 to derive it from training.warmup_epochs.')
  _number(t.base_learning_rate, 'training.base_learning_rate', 0.,
          'must be a finite number > 0 (scaled by batch / 256).')
  _number(t.weight_decay, 'training.weight_decay', 0.,
          'must be a finite number >= 0.', above=False)
  _number(t.trust_coefficient, 'training.trust_coefficient', 0.,
          'must be a finite number > 0 (LARS eta; the paper uses 1e-3).')
  _number(t.predictor_lr_multiplier, 'training.predictor_lr_multiplier', 0.,
          "must be a finite number > 0 (1: the paper's single learning rate).")
  check(0. <= t.base_ema <= 1., 'training.base_ema', t.base_ema,
        'must be in [0, 1] (tau_base).')
  _number(t.temperature, 'training.temperature', 0.,
          'must be a finite number > 0 (SimCLR InfoNCE temperature).')
  _positive_int(t, 'modified_init_batch_size',
                'training.modified_init_batch_size')
  _positive_int(t, 'modified_init_chunk_size',
                'training.modified_init_chunk_size')
  if t.modified_init and model.encoder_norm != 'affine':
    fail('training.modified_init', True,
         'needs model.encoder_norm=affine (the BN layers are replaced by '
         'calibrated affine layers, paper §3.2).')

  c = config.checkpoint
  for name in ('every_steps', 'every_secs'):
    check(c[name] >= 0, f'checkpoint.{name}', c[name],
          'must be >= 0 (0: no such schedule).')
  _positive_int(c, 'max_to_keep', 'checkpoint.max_to_keep')

  lg = config.logging
  _positive_int(lg, 'every_steps', 'logging.every_steps')
  check(_is_int(lg.knn_every_steps) and lg.knn_every_steps >= 0,
        'logging.knn_every_steps', lg.knn_every_steps,
        'must be an integer >= 0 (0: no kNN monitor).')
  check(_is_int(lg.knn_max_train_examples) and lg.knn_max_train_examples >= 0,
        'logging.knn_max_train_examples', lg.knn_max_train_examples,
        'must be an integer >= 0 (0: every training example).')

  e = config.eval
  _positive_int(e, 'num_epochs', 'eval.num_epochs')
  rates = tuple(e.learning_rates)
  check(len(rates) > 0 and all(
     isinstance(r, (int, float)) and math.isfinite(r) and r > 0
     for r in rates), 'eval.learning_rates', rates,
        'must be one or more finite base rates > 0 (for batch 256), e.g. '
        '(0.4, 0.3, 0.2, 0.1, 0.05).')
  check(_is_int(e.sweep_valid_examples) and (
     e.sweep_valid_examples > 0 or e.sweep_valid_examples == -1),
        'eval.sweep_valid_examples', e.sweep_valid_examples,
        'must be a positive count, or -1 for a fifth of the training split '
        f'(at most {splits.IMAGENET_VALID_EXAMPLES}).')
  check(0 <= e.momentum < 1, 'eval.momentum', e.momentum,
        'must be in [0, 1).')


def mode_of(config) -> str:
  """'linear_eval' when eval.pretrain_workdir is set or mode says so."""
  check(config.mode in MODES, 'mode', config.mode,
        f'use one of {", ".join(MODES)}.')
  if config.eval.pretrain_workdir:
    return 'linear_eval'
  if config.mode == 'linear_eval':
    fail('eval.pretrain_workdir', '',
         'set it to the pre-training run to evaluate, e.g. '
         '--config.eval.pretrain_workdir=/tmp/byol_quickstart.')
  return config.mode


# Sections that describe the checkpoint: linear evaluation takes them from
