"""Validation of a config's input fields: one line per bad value.

Every field a run reads is checked here once, at start-up (plan.build),
before any data is opened or anything compiles. A bad value raises
ConfigError, whose one-line message names the field, the value and what is
allowed; main.py prints it and exits 2.
"""

import math

from byol_jax import methods
from byol_jax.data import sources
from byol_jax.methods import networks

METHODS = methods.METHODS
MODES = ('pretrain', 'linear_eval')
IN_MEMORY_ON = ('device', 'host')
# jax.random.PRNGKey(seed) without jax_enable_x64 keeps the low 32 bits
# (PRNGKey(2**32) == PRNGKey(0)) and overflows from 2**63.
SEED_LIMIT = 2**32
# Pre-training's smallest batch per device: the collapse statistics are a
# standard deviation over each device's examples (metrics.collapse_std), and
# BatchNorm's batch variance of one example is 0 (every output its offset).
MIN_PRETRAIN_PER_DEVICE = 2


class ConfigError(ValueError):
  """A config value that cannot run; the message names the field and fix."""


def fail(field: str, value, allowed: str):
  """Refuses a config value in one line.

  Args:
    field: the dotted config field, e.g. 'training.batch_size'.
    value: its value (shown with repr).
    allowed: what is allowed, or how to fix it (one sentence).

  Raises:
    ConfigError: always, with the message '<field>=<value!r>: <allowed>'.
  """
  raise ConfigError(f'{field}={value!r}: {allowed}')


def check(ok: bool, field: str, value, allowed: str) -> None:
  """Refuses a config value unless `ok`.

  Args:
    ok: whether the value is acceptable.
    field: the dotted config field, for the message.
    value: its value, for the message.
    allowed: what is allowed, for the message.

  Raises:
    ConfigError: `ok` is false (see `fail`).
  """
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
  check(
      _is_int(value) and value > 0,
      field,
      value,
      'must be a positive integer'
      + (f' (or -1: {auto})' if auto else '')
      + '.',
  )


def _number(
    value, field: str, low: float, allowed: str, *, above: bool = True
) -> None:
  """A finite number > low (or >= low with above=False)."""
  ok = (
      isinstance(value, (int, float))
      and not isinstance(value, bool)
      and math.isfinite(value)
      and (value > low if above else value >= low)
  )
  check(ok, field, value, allowed)


def check_batch(field: str, batch, topology, per_device: int = 1) -> None:
  """Checks that a global batch splits evenly over the devices.

  Args:
    field: the config field of the batch, e.g. 'training.global_batch_size'.
    batch: the global batch size (images over all hosts).
    topology: the run's topology (device_count, process_count,
      local_device_count).
    per_device: the fewest examples a device may get
      (MIN_PRETRAIN_PER_DEVICE for pre-training, which says why).

  Raises:
    ConfigError: `batch` is not a positive int multiple of
      topology.device_count, or gives fewer than `per_device` examples per
      device; the message suggests the nearest batch that works.
  """
  devices = topology.device_count
  ok = _is_int(batch) and batch >= per_device * devices
  if ok and not batch % devices:
    return
  hint = max((batch if _is_int(batch) else 0) // devices, per_device) * devices
  where = (
      f'{topology.process_count} host(s) x '
      f'{topology.local_device_count} device(s)'
  )
  if ok or per_device == 1 or not _is_int(batch) or batch <= 0:
    fail(
        field,
        batch,
        f'must be a positive multiple of the {devices} devices '
        f'({where}), e.g. --config.{field}={hint}.',
    )
  fail(
      field,
      batch,
      f'gives {batch / devices:g} example(s) per device '
      f'({where}); pre-training needs at least {per_device} per device '
      '(the collapse statistics are a standard deviation over each '
      "device's examples, and BatchNorm's variance of one example is 0), "
      f'e.g. --config.{field}={hint}.',
  )


def validate_inputs(config, mode: str) -> None:
  """Checks every input field that needs neither data nor devices.

  Args:
    config: the experiment config of inputs (byol_jax/configs.py).
    mode: 'pretrain' or 'linear_eval' (fields that mode reads are checked).

  Raises:
    ConfigError: naming the first bad field, its value and what is allowed.
  """
  check(
      config.method in METHODS,
      'method',
      config.method,
      f'use one of {", ".join(METHODS)}.',
  )
  check(
      _is_int(config.seed) and 0 <= config.seed < SEED_LIMIT,
      'seed',
      config.seed,
      f'must be an integer in [0, 2**32) = [0, {SEED_LIMIT - 1}]'
      ': jax.random.PRNGKey keeps 32 bits (2**32 would repeat seed 0, '
      '2**63 overflows).',
  )
  model = config.model
  check(
      _is_int(model.gn_groups) and model.gn_groups >= 1,
      'model.gn_groups',
      model.gn_groups,
      'must be an integer >= 1 (the paper uses 16).',
  )
  _number(
      model.width_multiplier,
      'model.width_multiplier',
      0.0,
      'must be a finite number > 0.',
  )
  for name in (
      'projector_hidden_size',
      'projector_output_size',
      'predictor_hidden_size',
  ):
    _positive_int(model, name, f'model.{name}')
  check(
      0 <= model.bn_decay < 1,
      'model.bn_decay',
      model.bn_decay,
      'must be in [0, 1) (the official value is 0.9).',
  )
  try:
    networks.validate_model_config(model)
  except ValueError as e:
    raise ConfigError(str(e)) from None

  data = config.data
  _positive_int(data, 'image_size', 'data.image_size')
  check(
      0 < data.min_crop_area <= 1,
      'data.min_crop_area',
      data.min_crop_area,
      'must be in (0, 1] (BYOL: 0.08).',
  )
  check(
      _is_int(data.held_out_examples) and data.held_out_examples >= 0,
      'data.held_out_examples',
      data.held_out_examples,
      'must be an integer >= 0 (0: hold nothing out).',
  )
  check(
      _is_int(data.max_in_memory_mb) and data.max_in_memory_mb >= 0,
      'data.max_in_memory_mb',
      data.max_in_memory_mb,
      'must be an integer >= 0 (MiB of decoded uint8 images held in '
      'memory; 0: folders stream through tf.data).',
  )
  check(
      _is_int(data.cache_side) and data.cache_side >= 0,
      'data.cache_side',
      data.cache_side,
      "must be an integer >= 0 (0: the images' own size).",
  )
  check(
      data.in_memory_on in IN_MEMORY_ON,
      'data.in_memory_on',
      data.in_memory_on,
      f'use one of {", ".join(IN_MEMORY_ON)}.',
  )
  check(
      isinstance(data.cache_dir, str) and '://' not in data.cache_dir,
      'data.cache_dir',
      data.cache_dir,
      "must be a local directory path ('' for the default); the cache "
      'of decoded folders is not written to gs:// or other URLs.',
  )
  check(
      data.num_classes == -1
      or (_is_int(data.num_classes) and data.num_classes > 0),
      'data.num_classes',
      data.num_classes,
      'must be > 0, or -1 to take it from the dataset.',
  )
  if mode == 'pretrain':
    check(
        bool(data.source),
        'data.source',
        data.source,
        'name a dataset: tfds:<name> | folder:<path> | digits | '
        'synthetic[:<side>].',
    )

  t = config.training
  _positive_int(
      t,
      'total_steps',
      'training.total_steps',
      auto='derive it from training.num_epochs',
  )
  if t.total_steps == -1:
    check(
        _is_int(t.num_epochs) and t.num_epochs > 0,
        'training.num_epochs',
        t.num_epochs,
        'must be a positive integer (or set ' 'training.total_steps).',
    )
  _positive_int(t, 'max_steps', 'training.max_steps', auto='no early stop')
  _number(
      t.warmup_epochs,
      'training.warmup_epochs',
      0.0,
      'must be >= 0.',
      above=False,
  )
  check(
      t.warmup_steps == -1 or (_is_int(t.warmup_steps) and t.warmup_steps >= 0),
      'training.warmup_steps',
      t.warmup_steps,
      'must be >= 0, or -1 to derive it from training.warmup_epochs.',
  )
  _number(
      t.base_learning_rate,
      'training.base_learning_rate',
      0.0,
      'must be a finite number > 0 (scaled by batch / 256).',
  )
  _number(
      t.weight_decay,
      'training.weight_decay',
      0.0,
      'must be a finite number >= 0.',
      above=False,
  )
  _number(
      t.trust_coefficient,
      'training.trust_coefficient',
      0.0,
      'must be a finite number > 0 (LARS eta; the paper uses 1e-3).',
  )
  _number(
      t.predictor_lr_multiplier,
      'training.predictor_lr_multiplier',
      0.0,
      "must be a finite number > 0 (1: the paper's single learning rate).",
  )
  check(
      0.0 <= t.base_ema <= 1.0,
      'training.base_ema',
      t.base_ema,
      'must be in [0, 1] (tau_base).',
  )
  _number(
      t.temperature,
      'training.temperature',
      0.0,
      'must be a finite number > 0 (SimCLR InfoNCE temperature).',
  )
  _positive_int(
      t, 'modified_init_batch_size', 'training.modified_init_batch_size'
  )
  _positive_int(
      t, 'modified_init_chunk_size', 'training.modified_init_chunk_size'
  )
  if t.modified_init and model.encoder_norm != 'affine':
    fail(
        'training.modified_init',
        True,
        'needs model.encoder_norm=affine (the BN layers are replaced by '
        'calibrated affine layers, paper §3.2).',
    )

  c = config.checkpoint
  for name in ('every_steps', 'every_secs'):
    check(
        c[name] >= 0,
        f'checkpoint.{name}',
        c[name],
        'must be >= 0 (0: no such schedule).',
    )
  _positive_int(c, 'max_to_keep', 'checkpoint.max_to_keep')

  lg = config.logging
  _positive_int(lg, 'every_steps', 'logging.every_steps')
  check(
      _is_int(lg.knn_every_steps) and lg.knn_every_steps >= 0,
      'logging.knn_every_steps',
      lg.knn_every_steps,
      'must be an integer >= 0 (0: no kNN monitor).',
  )
  check(
      _is_int(lg.knn_max_train_examples) and lg.knn_max_train_examples >= 0,
      'logging.knn_max_train_examples',
      lg.knn_max_train_examples,
      'must be an integer >= 0 (0: every training example).',
  )
  _number(
      lg.collapse_stop_below,
      'logging.collapse_stop_below',
      0.0,
      'must be a finite number >= 0 (0: never stop; healthy runs log '
      '0.03 and above, collapsed ones 0.000).',
      above=False,
  )
  _positive_int(lg, 'collapse_stop_after', 'logging.collapse_stop_after')

  e = config.eval
  _positive_int(e, 'num_epochs', 'eval.num_epochs')
  rates = tuple(e.learning_rates)
  check(
      len(rates) > 0
      and all(
          isinstance(r, (int, float)) and math.isfinite(r) and r > 0
          for r in rates
      ),
      'eval.learning_rates',
      rates,
      'must be one or more finite base rates > 0 (for batch 256), e.g. '
      '(0.4, 0.3, 0.2, 0.1, 0.05).',
  )
  check(
      _is_int(e.sweep_valid_examples)
      and (e.sweep_valid_examples > 0 or e.sweep_valid_examples == -1),
      'eval.sweep_valid_examples',
      e.sweep_valid_examples,
      'must be a positive count, or -1 for a fifth of the training split '
      f'(at most {sources.IMAGENET_VALID_EXAMPLES}).',
  )
  check(0 <= e.momentum < 1, 'eval.momentum', e.momentum, 'must be in [0, 1).')


def mode_of(config) -> str:
  """What a run does: pre-train, or evaluate a pre-trained encoder.

  Args:
    config: the experiment config (reads `mode` and
      `eval.pretrain_workdir`).

  Returns:
    'linear_eval' when eval.pretrain_workdir is set, else config.mode.

  Raises:
    ConfigError: mode is not one of MODES, or it is 'linear_eval' without
      eval.pretrain_workdir.
  """
  check(
      config.mode in MODES,
      'mode',
      config.mode,
      f'use one of {", ".join(MODES)}.',
  )
  if config.eval.pretrain_workdir:
    return 'linear_eval'
  if config.mode == 'linear_eval':
    fail(
        'eval.pretrain_workdir',
        '',
        'set it to the pre-training run to evaluate, e.g. '
        '--config.eval.pretrain_workdir=/tmp/byol_quickstart.',
    )
  return config.mode


# Sections that describe the checkpoint: linear evaluation takes them from
