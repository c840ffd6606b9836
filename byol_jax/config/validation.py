"""Every input field's check: ConfigError, one line naming field, value, fix
(plan.build runs them before any data is opened or anything compiles)."""

import functools
import math
import operator

from byol_jax import methods
from byol_jax.data import sources
from byol_jax.methods import networks

METHODS = methods.METHODS
# jax.random.PRNGKey(seed) without jax_enable_x64 keeps the low 32 bits
# (PRNGKey(2**32) == PRNGKey(0)) and overflows from 2**63.
SEED_LIMIT = 2**32
# Pre-training's smallest batch per device (check_batch's message says why).
MIN_PRETRAIN_PER_DEVICE = 2


class ConfigError(ValueError):
  """A config value that cannot run; the message names the field and fix."""


def fail(field: str, value, allowed: str):
  """Raises ConfigError('<field>=<value!r>: <allowed>')."""
  raise ConfigError(f'{field}={value!r}: {allowed}')


def check(ok: bool, field: str, value, allowed: str) -> None:
  """`fail`s unless `ok`."""
  if not ok:
    fail(field, value, allowed)


_is_int = lambda x: isinstance(x, int) and not isinstance(x, bool)
_is_finite = lambda x: _is_int(x) or isinstance(x, float) and math.isfinite(x)
_note = lambda note: f' ({note}).' if note else '.'


def _ints(lowest, note='', auto=False):
  """Integers >= lowest (and -1 when `auto`; the note says what -1 means)."""
  plain = lowest == 1 and not note
  allowed = 'a positive integer' if plain else f'an integer >= {lowest}'
  ok = lambda v: _is_int(v) and (v >= lowest or auto and v == -1)
  return ok, f'must be {allowed}{_note(note)}'


def _numbers(sign, note=''):
  ok = lambda v: _is_finite(v) and (v > 0 if sign == '>' else v >= 0)
  return ok, f'must be a finite number {sign} 0{_note(note)}'


def _interval(interval, note=''):
  """A number in `interval` of [0, 1]: '[' / ']' closed, '(' / ')' open."""
  low = operator.lt if interval[0] == '(' else operator.le
  high = operator.lt if interval[-1] == ')' else operator.le
  allowed = f'must be in {interval}{_note(note)}'
  return lambda v: low(0, v) and high(v, 1), allowed


def _one_of(choices):
  return lambda v: v in choices, f'use one of {", ".join(choices)}.'


# {field: (whether a value is allowed, what is allowed)}, in schema order.
_FIELDS = {
    'mode': _one_of(('pretrain', 'linear_eval')),
    'seed': (
        lambda v: _is_int(v) and 0 <= v < SEED_LIMIT,
        f'must be an integer in [0, 2**32) = [0, {SEED_LIMIT - 1}]: '
        'jax.random.PRNGKey keeps 32 bits.',
    ),
    'method': _one_of(METHODS),
    'model.width_multiplier': _numbers('>'),
    'model.gn_groups': _ints(1, 'the paper uses 16'),
    'model.bn_decay': _interval('[0, 1)', 'the official value is 0.9'),
    'model.projector_hidden_size': _ints(1),
    'model.projector_output_size': _ints(1),
    'model.predictor_hidden_size': _ints(1),
    'data.image_size': _ints(1),
    'data.min_crop_area': _interval('(0, 1]', 'BYOL: 0.08'),
    'data.held_out_examples': _ints(0, '0: hold nothing out'),
    'data.num_classes': _ints(1, "-1: the dataset's", auto=True),
    'data.max_in_memory_mb': _ints(0, 'decoded MiB held in memory; 0: stream'),
    'data.cache_side': _ints(0, "0: the images' own size"),
    'data.cache_dir': (
        lambda v: isinstance(v, str) and '://' not in v,
        "must be a local directory path ('' for the default); the cache "
        'of decoded folders is not written to gs:// or other URLs.',
    ),
    'data.in_memory_on': _one_of(('device', 'host')),
    'training.total_steps': _ints(1, '-1: from training.num_epochs', auto=True),
    'training.max_steps': _ints(1, '-1: no early stop', auto=True),
    'training.accumulation_steps': _ints(1, '1: no accumulation'),
    'training.base_learning_rate': _numbers('>', 'scaled by batch / 256'),
    'training.warmup_epochs': _numbers('>='),
    'training.warmup_steps': _ints(0, '-1: from warmup_epochs', auto=True),
    'training.weight_decay': _numbers('>='),
    'training.trust_coefficient': _numbers('>', 'LARS eta; paper: 1e-3'),
    'training.predictor_lr_multiplier': _numbers('>', '1: the paper'),
    'training.base_ema': _interval('[0, 1]', 'tau_base'),
    'training.temperature': _numbers('>', 'SimCLR InfoNCE temperature'),
    'training.modified_init_batch_size': _ints(1),
    'training.modified_init_chunk_size': _ints(1),
    'checkpoint.every_steps': _ints(0, '0: no such schedule'),
    'checkpoint.every_secs': _numbers('>=', '0: no such schedule'),
    'checkpoint.max_to_keep': _ints(1),
    'logging.every_steps': _ints(1),
    'logging.knn_every_steps': _ints(0, '0: no kNN monitor'),
    'logging.knn_max_train_examples': _ints(0, '0: every training example'),
    'logging.collapse_stop_below': _numbers(
        '>=', '0: never; healthy runs log 0.03 and above, collapsed 0.000'
    ),
    'logging.collapse_stop_after': _ints(1),
    'eval.num_epochs': _ints(1),
    'eval.sweep_valid_examples': _ints(
        1, f'-1: a fifth of train, <= {sources.IMAGENET_VALID_EXAMPLES}', True
    ),
    'eval.learning_rates': (
        lambda v: v and all(_is_finite(r) and r > 0 for r in v),
        'must be one or more finite base rates > 0 (for batch 256), e.g. '
        '(0.4, 0.3, 0.2, 0.1, 0.05).',
    ),
    'eval.momentum': _interval('[0, 1)'),
}


def check_batch(config, section: str, topology) -> None:
  """Refuses a global batch that gives a device 0, or pre-training's < 2."""
  field, t = f'{section}.global_batch_size', topology
  batch, devices = config[section].global_batch_size, t.device_count
  per_device = MIN_PRETRAIN_PER_DEVICE if section == 'training' else 1
  whole = _is_int(batch) and batch > 0
  if whole and batch >= per_device * devices and not batch % devices:
    return
  hint = max((batch if whole else 0) // devices, per_device) * devices
  where = f'{t.process_count} host(s) x {t.local_device_count} device(s)'
  if whole and per_device > 1 and batch < per_device * devices:
    allowed = (
        f'gives {batch / devices:g} example(s) per device ({where}); '
        f'pre-training needs at least {per_device} per device (the collapse '
        "statistics are a standard deviation over each device's examples, "
        "and BatchNorm's variance of one example is 0)"
    )
  else:
    allowed = f'must be a positive multiple of the {devices} devices ({where})'
  fail(field, batch, f'{allowed}, e.g. --config.{field}={hint}.')


def validate_inputs(config) -> str:
  """Checks every input field that needs neither data nor devices: the mode."""
  check(
      config.eval.pretrain_workdir or config.mode != 'linear_eval',
      'eval.pretrain_workdir',
      '',
      'set it to the pre-training run to evaluate, e.g. '
      '--config.eval.pretrain_workdir=/tmp/byol_quickstart.',
  )
  mode = 'linear_eval' if config.eval.pretrain_workdir else config.mode
  for field, (ok, allowed) in _FIELDS.items():
    value = functools.reduce(operator.getitem, field.split('.'), config)
    check(ok(value), field, value, allowed)
  try:
    networks.validate_model_config(config.model)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  source, t = config.data.source, config.training
  check(
      mode != 'pretrain' or source,
      'data.source',
      source,
      'name a dataset: tfds:<name> | folder:<path> | digits | '
      'synthetic[:<side>].',
  )
  check(
      t.total_steps != -1 or _is_int(t.num_epochs) and t.num_epochs > 0,
      'training.num_epochs',
      t.num_epochs,
      'must be a positive integer (or set training.total_steps).',
  )
  check(
      t.accumulation_steps == 1 or config.method != 'simclr',
      'training.accumulation_steps',
      t.accumulation_steps,
      "must be 1 for SimCLR: its negatives are the batch's other examples, "
      'so micro-batches would change its loss.',
  )
  check(
      not t.modified_init or config.model.encoder_norm == 'affine',
      'training.modified_init',
      t.modified_init,
      'needs model.encoder_norm=affine (the BN layers are replaced by '
      'calibrated affine layers, paper §3.2).',
  )
  return mode
