"""The run plan: a config of inputs + the dataset + the devices -> the run.

Experiment configs (experiments/*.py) hold inputs only: epochs or an explicit
step count, the global batch, base learning rates, the variant. `build` runs
once at start-up, after ml_collections has applied the `--config.*`
overrides, and turns them into the run:

  1. the mode: pre-training, or linear evaluation of `eval.pretrain_workdir`
     (any config with that field set; `eval_inputs` is the one merge rule);
  2. every input field validated (ConfigError: one line naming the field, the
     bad value and what is allowed) before anything is opened or compiled;
  3. the data source opened (or, with read_data=False, only listed: folder
     file names, or the known-size table of sources.KNOWN_SIZES), with
     `data.held_out_examples` carved from train when asked;
  4. every split the run will read (pre-training, the kNN monitor, linear
     evaluation) checked to exist;
  5. the derived values, in a `derived` section of the returned config:
     dataset size and classes, total and warm-up steps, the batch-scaled peak
     learning rates, per-host and per-device batches, the resolved split
     names, the linear probe's step count.

Pre-training, linear evaluation, load_encoder, reproduce and the benchmarks
take the built config; nothing downstream re-derives or re-validates.
WORKDIR/config.json is the built config: the values actually used.

Run length, in order of precedence:
  * training.total_steps > 0 (the `steps=` option) is the step count;
  * else floor(training.num_epochs * examples / global_batch_size), the
    official BYOL code's formula (byol/configs/byol.py: num_epochs *
    train_images // batch_size);
  * the `epochs=` option sets num_epochs and clears a preset's step count
    (`tiny,epochs=30` runs 30 epochs); `--config.training.num_epochs` does
    not clear an explicit training.total_steps: derived.total_steps_from says
    which one was used.
  * training.warmup_steps >= 0 is the warm-up; else warmup_epochs * examples
    // batch. A warm-up longer than the run is shortened to the run (logged,
    and listed in derived.notes).

Resume contract: `trajectory(config)` is what shapes the training trajectory
(model, method, seed, batch, step counts and schedules, optimiser, data
source, size and crops); each checkpoint records it, and a run that would
resume under a different one stops (pretrain.py).
"""

import dataclasses
import hashlib
import json
import math
from typing import Any, Optional

import ml_collections

from byol_jax import schedules

METHODS = ('byol', 'simclr')
MODES = ('pretrain', 'linear_eval')
IN_MEMORY_ON = ('device', 'host')
# derived.data_path: decoded once and cropped on the devices, or tf.data.
IN_MEMORY, STREAMING = 'in_memory', 'streaming'


class ConfigError(ValueError):
  """A config value that cannot run; the message names the field and fix."""


@dataclasses.dataclass(frozen=True)
class Topology:
  """The devices a run is planned for.

  Attributes:
    process_count: hosts (processes) in the run.
    local_device_count: devices per host.
  """
  process_count: int
  local_device_count: int

  @property
  def device_count(self) -> int:
    return self.process_count * self.local_device_count

  @classmethod
  def current(cls) -> 'Topology':
    """This run's topology (jax.distributed must already be initialised)."""
    import jax  # pylint: disable=g-import-not-at-top
    return cls(jax.process_count(), jax.local_device_count())


@dataclasses.dataclass(frozen=True)
class Run:
  """What `build` returns.

  Attributes:
    config: the built config: the inputs plus the `derived` section, locked.
    source: the opened data source (sources.Source); with read_data=False a
      listing or a sources.SizedSource stand-in that reads no images.
  """
  config: ml_collections.ConfigDict
  source: Any


# ------------------------------------------------------------------ checks
def _fail(field: str, value, allowed: str):
  raise ConfigError(f'{field}={value!r}: {allowed}')


def _check(ok: bool, field: str, value, allowed: str) -> None:
  if not ok:
    _fail(field, value, allowed)


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _positive_int(section, name, field=None, *, auto=''):
  """Checks a positive integer field; `auto` describes what -1 means."""
  value = section[name]
  field = field or name
  if auto and value == -1:
    return
  _check(_is_int(value) and value > 0, field, value,
         'must be a positive integer' + (f' (or -1: {auto})' if auto else '')
         + '.')


def _number(value, field: str, low: float, allowed: str, *,
            above: bool = True) -> None:
  """A finite number > low (or >= low with above=False)."""
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and
        math.isfinite(value) and (value > low if above else value >= low))
  _check(ok, field, value, allowed)


def check_batch(field: str, batch, topology: Topology) -> None:
  """Raises unless `batch` is a positive multiple of the device count."""
  devices = topology.device_count
  if not _is_int(batch) or batch <= 0 or batch % devices:
    hint = max(1, (batch if _is_int(batch) else 0) // devices) * devices
    hint = max(hint, devices)
    _fail(field, batch,
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
  _check(config.method in METHODS, 'method', config.method,
         f'use one of {", ".join(METHODS)}.')
  _check(_is_int(config.seed) and config.seed >= 0, 'seed', config.seed,
         'must be an integer >= 0.')
  model = config.model
  _check(_is_int(model.gn_groups) and model.gn_groups >= 1, 'model.gn_groups',
         model.gn_groups, 'must be an integer >= 1 (the paper uses 16).')
  _number(model.width_multiplier, 'model.width_multiplier', 0.,
          'must be a finite number > 0.')
  for name in ('projector_hidden_size', 'projector_output_size',
               'predictor_hidden_size'):
    _positive_int(model, name, f'model.{name}')
  _check(0 <= model.bn_decay < 1, 'model.bn_decay', model.bn_decay,
         'must be in [0, 1) (the official value is 0.9).')
  try:
    networks.validate_model_config(model)
  except ValueError as e:
    raise ConfigError(str(e)) from None

  data = config.data
  _positive_int(data, 'image_size', 'data.image_size')
  _check(0 < data.min_crop_area <= 1, 'data.min_crop_area', data.min_crop_area,
         'must be in (0, 1] (BYOL: 0.08).')
  _check(_is_int(data.held_out_examples) and data.held_out_examples >= 0,
         'data.held_out_examples', data.held_out_examples,
         'must be an integer >= 0 (0: hold nothing out).')
  _check(_is_int(data.max_in_memory_mb) and data.max_in_memory_mb >= 0,
         'data.max_in_memory_mb', data.max_in_memory_mb,
         'must be an integer >= 0 (MiB of decoded uint8 images held in '
         'memory; 0: folders stream through tf.data).')
  _check(_is_int(data.cache_side) and data.cache_side >= 0,
         'data.cache_side', data.cache_side,
         'must be an integer >= 0 (0: the images\' own size).')
  _check(data.in_memory_on in IN_MEMORY_ON, 'data.in_memory_on',
         data.in_memory_on, f'use one of {", ".join(IN_MEMORY_ON)}.')
  _check(isinstance(data.cache_dir, str) and '://' not in data.cache_dir,
         'data.cache_dir', data.cache_dir,
         "must be a local directory path ('' for the default); the cache "
         'of decoded folders is not written to gs:// or other URLs.')
  _check(data.num_classes == -1 or (_is_int(data.num_classes) and
                                    data.num_classes > 0),
         'data.num_classes', data.num_classes,
         'must be > 0, or -1 to take it from the dataset.')
  if mode == 'pretrain':
    _check(bool(data.source), 'data.source', data.source,
           'name a dataset: tfds:<name> | folder:<path> | digits | '
           'synthetic[:<side>].')

  t = config.training
  _positive_int(t, 'total_steps', 'training.total_steps',
                auto='derive it from training.num_epochs')
  if t.total_steps == -1:
    _check(_is_int(t.num_epochs) and t.num_epochs > 0, 'training.num_epochs',
           t.num_epochs, 'must be a positive integer (or set '
           'training.total_steps).')
  _positive_int(t, 'max_steps', 'training.max_steps',
                auto='no early stop')
  _check(_is_int(t.warmup_epochs) and t.warmup_epochs >= 0,
         'training.warmup_epochs', t.warmup_epochs, 'must be an integer >= 0.')
  _check(t.warmup_steps == -1 or (_is_int(t.warmup_steps) and
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
  _check(0. <= t.base_ema <= 1., 'training.base_ema', t.base_ema,
         'must be in [0, 1] (tau_base).')
  _number(t.temperature, 'training.temperature', 0.,
          'must be a finite number > 0 (SimCLR InfoNCE temperature).')
  _positive_int(t, 'modified_init_batch_size',
                'training.modified_init_batch_size')
  _positive_int(t, 'modified_init_chunk_size',
                'training.modified_init_chunk_size')
  if t.modified_init and model.encoder_norm != 'affine':
    _fail('training.modified_init', True,
          'needs model.encoder_norm=affine (the BN layers are replaced by '
          'calibrated affine layers, paper §3.2).')

  c = config.checkpoint
  for name in ('every_steps', 'every_secs'):
    _check(c[name] >= 0, f'checkpoint.{name}', c[name],
           'must be >= 0 (0: no such schedule).')
  _positive_int(c, 'max_to_keep', 'checkpoint.max_to_keep')

  lg = config.logging
  _positive_int(lg, 'every_steps', 'logging.every_steps')
  _check(_is_int(lg.knn_every_steps) and lg.knn_every_steps >= 0,
         'logging.knn_every_steps', lg.knn_every_steps,
         'must be an integer >= 0 (0: no kNN monitor).')
  _check(_is_int(lg.knn_max_train_examples) and lg.knn_max_train_examples >= 0,
         'logging.knn_max_train_examples', lg.knn_max_train_examples,
         'must be an integer >= 0 (0: every training example).')

  e = config.eval
  _positive_int(e, 'num_epochs', 'eval.num_epochs')
  rates = tuple(e.learning_rates)
  _check(len(rates) > 0 and all(
      isinstance(r, (int, float)) and math.isfinite(r) and r > 0
      for r in rates), 'eval.learning_rates', rates,
         'must be one or more finite base rates > 0 (for batch 256), e.g. '
         '(0.4, 0.3, 0.2, 0.1, 0.05).')
  _check(_is_int(e.sweep_valid_examples) and (
      e.sweep_valid_examples > 0 or e.sweep_valid_examples == -1),
         'eval.sweep_valid_examples', e.sweep_valid_examples,
         'must be a positive count, or -1 for a fifth of the training split '
         '(at most 10000).')
  _check(0 <= e.momentum < 1, 'eval.momentum', e.momentum,
         'must be in [0, 1).')


# ------------------------------------------------------------------ mode
def mode_of(config) -> str:
  """'linear_eval' when eval.pretrain_workdir is set or mode says so."""
  _check(config.mode in MODES, 'mode', config.mode,
         f'use one of {", ".join(MODES)}.')
  if config.eval.pretrain_workdir:
    return 'linear_eval'
  if config.mode == 'linear_eval':
    _fail('eval.pretrain_workdir', '',
          'set it to the pre-training run to evaluate, e.g. '
          '--config.eval.pretrain_workdir=/tmp/byol_quickstart.')
  return config.mode


# Sections that describe the checkpoint: linear evaluation takes them from
# the pre-training run and refuses explicit overrides of them.
RUN_SECTIONS = ('method', 'model', 'training')


def option_names(options: str) -> set:
  """{'tiny', 'dataset'} from a config string 'tiny,dataset=digits'."""
  return {item.partition('=')[0].strip()
          for item in (options or '').split(',') if item.strip()}


def eval_inputs(config, pretrained, explicit=frozenset()
                ) -> ml_collections.ConfigDict:
  """The one merge rule of linear evaluation of a pre-training run.

  method, model, training (and the run's derived step counts): the
  pre-training run's (they describe the checkpoint). eval, logging,
  checkpoint, seed: this config's. data: the run's, except the fields this
  config sets explicitly: a `--config.data.<field>` override, or data.source
  when the config string has `dataset=` (e.g. linear_eval.py:dataset=...).
  A preset's data (gn_ws.py:tiny's digits) is not explicit: the run's wins.

  Args:
    config: the linear-evaluation config (inputs).
    pretrained: the pre-training run's config.json (a built config).
    explicit: dotted names of the fields the user set with `--config.*`
      overrides (main.py passes them; programmatic callers may too).

  Returns:
    A new, unlocked ConfigDict of inputs (plus the run's `derived`).

  Raises:
    ConfigError: an explicit override of a field the run owns.
  """
  for field in sorted(explicit):
    if field.split('.')[0] in RUN_SECTIONS:
      raise ConfigError(
          f'{field}: linear evaluation takes {field.split(".")[0]} from the '
          f'pre-training run (eval.pretrain_workdir='
          f'{config.eval.pretrain_workdir!r}), which describes its '
          f'checkpoint; drop --config.{field}.')
  merged = ml_collections.ConfigDict(pretrained.to_dict())
  merged.mode = 'linear_eval'
  merged.seed = config.seed
  merged.options = config.options
  for section in ('eval', 'logging', 'checkpoint'):
    merged[section] = ml_collections.ConfigDict(config[section].to_dict())
  chosen = {f.split('.', 1)[1] for f in explicit if f.startswith('data.')}
  if 'dataset' in option_names(config.options):
    chosen.add('source')
  for field in sorted(chosen):
    merged.data[field] = config.data[field]
  return merged


# ------------------------------------------------------------------ data
def _tensorflow_importable() -> bool:
  """Whether `import tensorflow` can work, without importing it (seconds)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  try:
    return importlib.util.find_spec('tensorflow') is not None
  except (ImportError, ValueError):  # sys.modules['tensorflow'] = None
    return False


def _open_source(data, read_data: bool):
  """(source, data path, decoded MiB or None) for data.source.

  Image folders and TFDS datasets whose decoded size fits
  data.max_in_memory_mb become an InMemorySource (folders decoded once with
  Pillow and cached on disk; TFDS through tfds.as_numpy); larger ones
  stream. With read_data=False nothing is decoded: the path is decided from
  the folder's listing (and one file's header) or the dataset's metadata.
  `data.held_out_examples` are carved as each source kind defines them
  (sources.hold_out): from the in-memory folder, from TFDS's train split
  before it is read.

  Raises:
    ConfigError: the source cannot be opened, or it needs TensorFlow (TFDS,
      or a folder that must stream) and TensorFlow is not importable.
  """
  # pylint: disable=g-import-not-at-top
  from byol_jax.data import memory_sources
  from byol_jax.data import sources
  # pylint: enable=g-import-not-at-top
  spec = data.source
  kind = spec.partition(':')[0]
  if kind == 'tfds' and not _tensorflow_importable():
    raise ConfigError(
        f'data.source={spec!r}: TFDS datasets need TensorFlow, which is not '
        'importable; install it (pip install tensorflow-cpu), or train on an '
        'image folder (folder:<path>), digits or synthetic.')
  limit = data.max_in_memory_mb * 2**20
  megabytes = None

  def hold(source):
    if not data.held_out_examples:
      return source
    try:
      return sources.hold_out(source, data.held_out_examples)
    except ValueError as e:
      raise ConfigError(f'data.held_out_examples={data.held_out_examples}: '
                        f'{e}') from None

  try:
    known = None if read_data else sources.known_source(spec)
    source = known or sources.get_source(spec, data_dir=data.data_dir or None,
                                         validate_files=False)
    if isinstance(source, sources.FolderSource):
      size = memory_sources.decoded_bytes(source, data.cache_side)
      fits = size is not None and size <= limit
      if read_data and fits:
        source = memory_sources.in_memory_folder(
            source, side=data.cache_side, cache_dir=data.cache_dir)
      elif read_data:  # streams: leave out what tf.data cannot decode
        source = sources.get_source(spec)
      source = hold(source)
    elif kind == 'tfds':
      source = hold(source)  # TFDS's own train[:N] slicing
      size = memory_sources.tfds_decoded_bytes(source, data.cache_side)
      fits = size is not None and size <= limit
      if read_data and fits:
        source = memory_sources.in_memory_tfds(source,
                                               side=data.cache_side)
    else:
      size, fits = None, True  # digits, synthetic
      source = hold(source)
  except ConfigError:
    raise
  except (ValueError, FileNotFoundError, OSError) as e:
    raise ConfigError(f'data.source={spec!r}: {e}') from None
  if size is not None:
    megabytes = round(size / 2**20, 1)
  path = IN_MEMORY if fits else STREAMING
  if path == STREAMING and not _tensorflow_importable():
    raise ConfigError(
        f'data.source={spec!r}: its decoded size ({megabytes} MiB) is above '
        f'data.max_in_memory_mb={data.max_in_memory_mb}, so it streams '
        'through tf.data, and TensorFlow is not importable; install it (pip '
        'install tensorflow-cpu), or use an image folder that fits in memory '
        '(raise --config.data.max_in_memory_mb, or lower '
        '--config.data.cache_side).')
  return source, path, megabytes


def _splits_read(config, mode: str) -> dict:
  """{config field: split name} of every split the run will read."""
  needed = {}
  if mode == 'pretrain':
    needed['data.pretrain_split'] = config.data.pretrain_split
    if config.logging.knn_every_steps:
      needed['logging.knn_every_steps (reference: linear_train)'] = (
          'linear_train')
      needed['eval.test_split'] = config.eval.test_split
  if mode == 'linear_eval' or config.eval.after_pretraining:
    needed['eval.train_split'] = config.eval.train_split
    needed['eval.test_split'] = config.eval.test_split
  return needed


def _check_splits(config, mode: str, source) -> dict:
  resolved = {}
  for field, split in _splits_read(config, mode).items():
    try:
      resolved[split] = source.resolve_split(split)
      n = source.num_examples(split)
    except ValueError as e:
      raise ConfigError(f'{field}={split!r} cannot be read from '
                        f'data.source={config.data.source!r}: {e}') from None
    if n is not None and n <= 0:
      _fail(field, split, f'split is empty in {config.data.source}.')
  return resolved


# ------------------------------------------------------------------ derive
def epochs_to_steps(epochs: int, num_examples: int, batch: int) -> int:
  """floor(epochs * examples / batch): the official byol/configs/byol.py."""
  return int(epochs) * int(num_examples) // int(batch)


# Held-out examples for the probe's learning-rate sweep when the dataset has
# no validation split and eval.sweep_valid_examples is -1: a fifth of the
# training split, at most ImageNet's 10,000.
SWEEP_VALID_MAX = 10_000


def sweep_valid_split(config, source) -> str:
  """The split the linear probe's learning rate is chosen on, or ''.

  The dataset's own 'linear_valid' split when it has one that is neither the
  probe's training split nor its test split (ImageNet: train[:10000], with
  the probes trained on train[10000:], as the official byol/utils/dataset.py
  splits it); '' otherwise, and `eval.sweep_valid_examples` of the training
  split are held out instead (linear_eval.sweep_learning_rate).

  Args:
    config: the experiment config (eval.train_split / eval.test_split).
    source: the opened data source.

  Returns:
    A split name `source` accepts, or ''.
  """
  try:
    valid = source.resolve_split('linear_valid')
  except ValueError:
    return ''
  others = {source.resolve_split(config.eval.train_split),
            source.resolve_split(config.eval.test_split)}
  return '' if valid in others else 'linear_valid'


def _derive(config, mode: str, source, topology: Topology,
            read_data: bool) -> dict:
  t, e = config.training, config.eval
  notes = []
  d = dict(mode=mode, data_read=read_data,
           process_count=topology.process_count,
           local_device_count=topology.local_device_count,
           device_count=topology.device_count)
  d['num_classes'] = int(source.num_classes)
  if config.data.num_classes > 0:
    if config.data.num_classes < source.num_classes:
      _fail('data.num_classes', config.data.num_classes,
            f'{config.data.source} has {source.num_classes} classes: use at '
            'least that many outputs, or -1 to take them from the dataset.')
    d['num_classes'] = config.data.num_classes
  d['splits'] = _check_splits(config, mode, source)
  if mode == 'pretrain':
    n = int(source.num_examples(config.data.pretrain_split))
    b = t.global_batch_size
    d['num_train_examples'] = n
    if t.total_steps > 0:
      total, d['total_steps_from'] = t.total_steps, 'training.total_steps'
    else:
      total = epochs_to_steps(t.num_epochs, n, b)
      d['total_steps_from'] = 'training.num_epochs'
      if total <= 0:
        _fail('training.num_epochs', t.num_epochs,
              f'gives 0 steps of batch {b} over {n} examples; raise it, lower '
              'training.global_batch_size, or set training.total_steps.')
    if t.warmup_steps >= 0:
      warmup, d['warmup_steps_from'] = t.warmup_steps, 'training.warmup_steps'
    else:
      warmup = epochs_to_steps(t.warmup_epochs, n, b)
      d['warmup_steps_from'] = 'training.warmup_epochs'
    if warmup > total:  # runner.py logs the notes once the run may start.
      notes.append(f'warm-up shortened from {warmup} to the run\'s '
                   f'{total} steps')
      warmup = total
    d.update(
        total_steps=int(total), warmup_steps=int(warmup),
        stop_step=int(total if t.max_steps < 0 else min(t.max_steps, total)),
        epochs=round(total * b / n, 4),
        peak_learning_rate=schedules.peak_learning_rate(
            t.base_learning_rate, b),
        per_host_batch_size=b // topology.process_count,
        per_device_batch_size=b // topology.device_count)
  if mode == 'linear_eval' or e.after_pretraining:
    n = source.num_examples(e.train_split)
    d['eval_num_train_examples'] = n
    # Steps of the probe: eval.num_epochs full passes of whole batches.
    d['eval_steps'] = int(e.num_epochs * max(1, n // e.global_batch_size))
    d['eval_peak_learning_rates'] = [
        schedules.peak_learning_rate(r, e.global_batch_size)
        for r in e.learning_rates]
    if len(e.learning_rates) > 1:
      valid_split = sweep_valid_split(config, source)
      if valid_split:  # ImageNet: train[:10000], apart from train[10000:].
        valid, rest = int(source.num_examples(valid_split)), n
      else:
        valid = e.sweep_valid_examples
        if valid == -1:
          valid = max(1, min(SWEEP_VALID_MAX, n // 5))
        _check(valid < n, 'eval.sweep_valid_examples', valid,
               f'must be below the {n} examples of eval.train_split '
               f'{e.train_split!r}: the learning-rate sweep trains on the '
               'rest.')
        rest = n - valid
      d['eval_sweep_valid_split'] = valid_split or ''
      d['eval_sweep_valid_examples'] = valid
      d['eval_sweep_steps'] = int(
          e.num_epochs * max(1, rest // e.global_batch_size))
    d['eval_per_device_batch_size'] = (e.global_batch_size //
                                       topology.device_count)
  # Whether image files were opened (checked) rather than only listed.
  d['data_read'] = d.get('data_read', True) and not getattr(
      source, 'stand_in', False)
  d['notes'] = notes
  return d


def build(config, *, topology: Optional[Topology] = None, source=None,
          read_data: bool = True, explicit=frozenset()) -> Run:
  """Validates the inputs, opens the data and derives the run, once.

  Args:
    config: an experiment config of inputs (get_config + overrides). A built
      config (with `derived`) is rebuilt from its inputs.
    topology: the devices (default: this process's, via jax).
    source: an already-opened data source for config.data (else opened).
    read_data: False for dry runs and benchmarks: no image is read; sizes
      come from a folder listing or sources.KNOWN_SIZES.
    explicit: dotted names of the fields set by `--config.*` overrides
      (linear evaluation's merge rule, eval_inputs, reads them).

  Returns:
    A Run: the built config (inputs + `derived`, locked) and the source.

  Raises:
    ConfigError: one line naming the field, the value and what is allowed.
  """
  inputs = ml_collections.ConfigDict(config.to_dict())
  with inputs.unlocked():
    if 'derived' in inputs:
      del inputs['derived']
  mode = mode_of(inputs)
  validate_inputs(inputs, mode)
  if mode == 'linear_eval':
    from byol_jax import encoder  # pylint: disable=g-import-not-at-top
    workdir = inputs.eval.pretrain_workdir
    try:
      pretrained = encoder.load_config(workdir)
      checkpoint_step = encoder.latest_checkpoint_step(workdir)
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f'eval.pretrain_workdir={workdir!r}: {e}') from None
    inputs = eval_inputs(inputs, pretrained, explicit)
    run_derived = pretrained.get('derived')
    with inputs.unlocked():
      if 'derived' in inputs:
        del inputs['derived']
  topology = topology or Topology.current()
  if mode == 'pretrain':
    check_batch('training.global_batch_size',
                inputs.training.global_batch_size, topology)
  if mode == 'linear_eval' or inputs.eval.after_pretraining:
    check_batch('eval.global_batch_size', inputs.eval.global_batch_size,
                topology)
  megabytes = None
  if source is None:
    source, data_path, megabytes = _open_source(inputs.data, read_data)
  else:
    from byol_jax.data import sources  # pylint: disable=g-import-not-at-top
    data_path = (IN_MEMORY if isinstance(source, sources.InMemorySource)
                 else STREAMING)
  derived = _derive(inputs, mode, source, topology, read_data)
  derived['data_path'] = data_path
  if data_path == IN_MEMORY:
    images = getattr(source, 'images', None)
    if images is not None:  # read: what the devices will hold
      megabytes = round(sum(x.nbytes for x in images.values()) / 2**20, 1)
    derived['in_memory_mb'] = megabytes if megabytes is not None else -1
  if mode == 'linear_eval':
    # The pre-training run's own plan (its schedules shape the checkpoint).
    for key in ('num_train_examples', 'total_steps', 'warmup_steps',
                'peak_learning_rate'):
      if key in (run_derived or {}):
        derived[f'pretrain_{key}'] = run_derived[key]
    total = derived.get('pretrain_total_steps', -1)
    derived['pretrain_checkpoint_step'] = checkpoint_step
    derived['pretrain_finished'] = bool(total > 0 and checkpoint_step >= total)
    if not derived['pretrain_finished']:
      derived['notes'].append(
          f'evaluating step {checkpoint_step} of a pre-training run of '
          f'{total} steps: the run is unfinished')
    old = pretrained.data
    if (inputs.data.source, inputs.data.image_size) != (old.source,
                                                        old.image_size):
      derived['notes'].append(
          f'evaluating on {inputs.data.source} at {inputs.data.image_size}px '
          f'an encoder pre-trained on {old.source} at {old.image_size}px')
  with inputs.unlocked():
    inputs.derived = ml_collections.ConfigDict(derived)
  inputs.lock()
  return Run(inputs, source)


def _deep_update(base: dict, new: dict) -> dict:
  for key, value in new.items():
    if isinstance(value, dict) and isinstance(base.get(key), dict):
      _deep_update(base[key], value)
    else:
      base[key] = value
  return base


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A built config from a run's config.json (WORKDIR/config.json).

  Fields added to the schema since the run was written take their defaults.
  A config.json written before configs were built here (no `derived`
  section; step counts and class count filled in place) gets the `derived`
  values it implies.

  Args:
    saved: the parsed JSON.

  Returns:
    An unlocked ConfigDict with a `derived` section.
  """
  from byol_jax import configs  # pylint: disable=g-import-not-at-top
  tree = _deep_update(configs.build(None).to_dict(), saved)
  if 'derived' not in saved:
    t, data = saved.get('training', {}), saved.get('data', {})
    tree['derived'] = dict(
        num_classes=data.get('num_classes', -1),
        num_train_examples=data.get('num_train_examples', -1),
        total_steps=t.get('total_steps', -1),
        warmup_steps=t.get('warmup_steps', -1))
  return ml_collections.ConfigDict(tree)


def check_built(config) -> None:
  """Raises TypeError for a config that did not go through `build`."""
  if 'derived' not in config:
    raise TypeError('this function takes a built config: call '
                    'byol_jax.plan.build(config) first (it derives the step '
                    'counts and validates the fields).')


# ------------------------------------------------------------ resume contract
# Fields that do not change the trajectory of pre-training: when to stop
# (max_steps), how it is logged, checkpointed and evaluated, where TFDS lives,
# and the inputs the derived step counts replace.
_NOT_TRAJECTORY = ('training.max_steps', 'training.num_epochs',
                   'training.total_steps', 'training.warmup_epochs',
                   'training.warmup_steps', 'training.modified_init_chunk_size',
                   'data.data_dir', 'data.cache_dir', 'data.in_memory_on',
                   'data.max_in_memory_mb',  # derived.data_path says
                   'data.num_classes')
_TRAJECTORY_SECTIONS = ('model', 'training', 'data')
_TRAJECTORY_DERIVED = ('num_train_examples', 'num_classes', 'total_steps',
                       'warmup_steps', 'data_path')


def flatten(tree: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(flatten(value, name + '.'))
    else:
      out[name] = value
  return out


def trajectory(config) -> dict:
  """{field: value} of everything that shapes pre-training's trajectory.

  model.*, method, seed, training.* (but max_steps), data source, size,
  image size and crops, and the derived step counts and class count.
  """
  check_built(config)
  tree = {'method': config.method, 'seed': config.seed}
  for section in _TRAJECTORY_SECTIONS:
    tree[section] = config[section].to_dict()
  tree['derived'] = {k: config.derived.get(k) for k in _TRAJECTORY_DERIVED}
  flat = flatten(tree)
  return {k: v for k, v in sorted(flat.items()) if k not in _NOT_TRAJECTORY}


def fingerprint(values: dict) -> str:
  """sha256 of a trajectory dict (stable JSON)."""
  return hashlib.sha256(json.dumps(values, sort_keys=True).encode()
                        ).hexdigest()


# Trajectory fields added after checkpoints were first written, and the value
# that reproduces what a checkpoint without them was trained under: images
# at their own size, and the host (tf.data or numpy) crops. A digits or
# synthetic run from before the in-memory path thus resumes only with
# checkpoint.allow_changed_config (its crops are now cut on the devices,
# from other random draws); a streamed ImageNet run resumes as before.
_TRAJECTORY_ADDED = {'data.cache_side': 0, 'derived.data_path': STREAMING}


def upgrade_trajectory(old: dict) -> dict:
  """A checkpoint's recorded trajectory with the fields added since.

  Args:
    old: the `trajectory` a checkpoint recorded.

  Returns:
    A copy with every field of _TRAJECTORY_ADDED it lacks, at the value its
    version implied.
  """
  return {**_TRAJECTORY_ADDED, **old}


def changes(old: dict, new: dict) -> dict:
  """{field: (old, new)} of the fields that differ (missing: None)."""
  keys = sorted(set(old) | set(new))
  return {k: (old.get(k), new.get(k)) for k in keys
          if old.get(k) != new.get(k)}


def describe_changes(diff: dict) -> str:
  return ', '.join(f'{k} {old!r} -> {new!r}' for k, (old, new) in diff.items())
