"""The run plan: a config of inputs + the dataset + the devices -> the run.

`build` runs once at start-up, after the `--config.*` overrides: the mode,
every field validated, the data opened, the splits checked, then the
`derived` section. Nothing downstream re-derives or re-validates;
WORKDIR/config.json is the built config.

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
"""

import dataclasses
from typing import Any, Optional

import ml_collections

from byol_jax import encoder
from byol_jax import schedules
from byol_jax.config import validation
from byol_jax.data import sources

ConfigError = validation.ConfigError  # what build raises


@dataclasses.dataclass(frozen=True)
class Topology:
  """The devices a run is planned for: hosts x devices per host."""

  process_count: int
  local_device_count: int

  @property
  def device_count(self) -> int:
    return self.process_count * self.local_device_count


@dataclasses.dataclass(frozen=True)
class Run:
  """The built config (inputs + `derived`, locked) and its data source."""

  config: ml_collections.ConfigDict
  source: Any  # read_data=False: a listing or a stand-in sources.TfdsSource


# Sections that describe the checkpoint: linear evaluation takes them from
# the pre-training run and refuses explicit overrides of them.
RUN_SECTIONS = ('method', 'model', 'training')


def _inputs(config) -> ml_collections.ConfigDict:
  """An unlocked copy of config without its `derived` section."""
  tree = config.to_dict()
  tree.pop('derived', None)
  return ml_collections.ConfigDict(tree)


def eval_inputs(
    config, pretrained, explicit=frozenset()
) -> ml_collections.ConfigDict:
  """The one merge rule of linear evaluation of a pre-training run.

  method, model, training: the run's (they describe the checkpoint); an
  explicit override of them is a ConfigError. eval, logging, checkpoint,
  seed: this config's. data: the run's, except the fields `explicit` names
  (`--config.data.*` overrides) and data.source when the config string has
  `dataset=`; a preset's data (gn_ws.py:tiny's digits) is not explicit.
  """
  for field in sorted(explicit):
    if field.split('.')[0] in RUN_SECTIONS:
      raise ConfigError(
          f'{field}: linear evaluation takes {field.split(".")[0]} from the '
          f'pre-training run (eval.pretrain_workdir='
          f'{config.eval.pretrain_workdir!r}), which describes its '
          f'checkpoint; drop --config.{field}.'
      )
  merged = _inputs(pretrained)
  merged.mode = 'linear_eval'
  merged.seed = config.seed
  merged.options = config.options
  for section in ('eval', 'logging', 'checkpoint'):
    merged[section] = ml_collections.ConfigDict(config[section].to_dict())
  chosen = {f.split('.', 1)[1] for f in explicit if f.startswith('data.')}
  options = (
      item.partition('=')[0] for item in (config.options or '').split(',')
  )
  if 'dataset' in {name.strip() for name in options}:
    chosen.add('source')
  for field in sorted(chosen):
    merged.data[field] = config.data[field]
  return merged


def _check_splits(config, mode: str, source) -> dict:
  """{split: resolved name} of every split the run reads, each checked."""
  needed = {}
  if mode == 'pretrain':
    needed['data.pretrain_split'] = config.data.pretrain_split
    if config.logging.knn_every_steps:
      field = 'logging.knn_every_steps (reference: linear_train)'
      needed[field] = 'linear_train'
      needed['eval.test_split'] = config.eval.test_split
  if mode == 'linear_eval' or config.eval.after_pretraining:
    needed['eval.train_split'] = config.eval.train_split
    needed['eval.test_split'] = config.eval.test_split
  resolved = {}
  for field, split in needed.items():
    try:
      resolved[split] = source.resolve_split(split)
      n = source.num_examples(split)
    except ValueError as e:
      raise ConfigError(
          f'{field}={split!r} cannot be read from '
          f'data.source={config.data.source!r}: {e}'
      ) from None
    if n is not None and n <= 0:
      validation.fail(field, split, f'split is empty in {config.data.source}.')
  return resolved


def epochs_to_steps(epochs: float, num_examples: int, batch: int) -> int:
  """floor(epochs * num_examples / batch), as official byol/configs/byol.py."""
  return int(epochs * int(num_examples)) // int(batch)


def sweep_valid_split(config, source) -> str:
  """'linear_valid' when the dataset has one apart from the probe's splits.

  ImageNet: train[:10000], the probes trained on train[10000:] (official
  byol/utils/dataset.py). '': eval.sweep_valid_examples are held out instead.
  """
  try:
    valid = source.resolve_split('linear_valid')
  except ValueError:
    return ''
  others = {
      source.resolve_split(config.eval.train_split),
      source.resolve_split(config.eval.test_split),
  }
  return '' if valid in others else 'linear_valid'


def _derive(config, mode: str, source, topology: Topology, notes) -> dict:
  """The derived step counts, learning rates and batches."""
  t, e = config.training, config.eval
  d = {}
  if mode == 'pretrain':
    n = int(source.num_examples(config.data.pretrain_split))
    b = t.global_batch_size
    if t.total_steps > 0:
      total, d['total_steps_from'] = t.total_steps, 'training.total_steps'
    else:
      total = epochs_to_steps(t.num_epochs, n, b)
      d['total_steps_from'] = 'training.num_epochs'
      if total <= 0:
        validation.fail(
            'training.num_epochs',
            t.num_epochs,
            f'gives 0 steps of batch {b} over {n} examples; raise it, lower '
            'training.global_batch_size, or set training.total_steps.',
        )
    warmup = t.warmup_steps
    if warmup < 0:
      warmup = epochs_to_steps(t.warmup_epochs, n, b)
    if warmup > total:  # runner.py logs the notes once the run may start.
      notes.append(
          f"warm-up shortened from {warmup} to the run's {total} steps"
      )
      warmup = total
    d.update(
        num_train_examples=n,
        total_steps=int(total),
        warmup_steps=int(warmup),
        stop_step=int(total if t.max_steps < 0 else min(t.max_steps, total)),
        peak_learning_rate=schedules.peak_learning_rate(
            t.base_learning_rate, b
        ),
        per_host_batch_size=b // topology.process_count,
        per_device_batch_size=b // topology.device_count,
    )
  if mode == 'linear_eval' or e.after_pretraining:
    n = source.num_examples(e.train_split)
    # Steps of the probe: eval.num_epochs full passes of whole batches.
    d['eval_num_train_examples'] = n
    d['eval_steps'] = int(e.num_epochs * max(1, n // e.global_batch_size))
    d['eval_peak_learning_rates'] = [
        schedules.peak_learning_rate(r, e.global_batch_size)
        for r in e.learning_rates
    ]
    if len(e.learning_rates) > 1:
      valid_split = sweep_valid_split(config, source)
      if valid_split:  # ImageNet: train[:10000], apart from train[10000:].
        valid, rest = int(source.num_examples(valid_split)), n
      else:
        valid = e.sweep_valid_examples
        if valid == -1:  # a fifth, at most ImageNet's 10,000
          valid = max(1, min(sources.IMAGENET_VALID_EXAMPLES, n // 5))
        validation.check(
            valid < n,
            'eval.sweep_valid_examples',
            valid,
            f'must be below the {n} examples of eval.train_split '
            f'{e.train_split!r}: the learning-rate sweep trains on the rest.',
        )
        rest = n - valid
      d['eval_sweep_valid_split'] = valid_split
      d['eval_sweep_valid_examples'] = valid
      d['eval_sweep_steps'] = int(
          e.num_epochs * max(1, rest // e.global_batch_size)
      )
  return d


def build(
    config,
    *,
    topology: Optional[Topology] = None,
    source=None,
    read_data: bool = True,
    explicit=frozenset(),
) -> Run:
  """Validates the inputs, opens the data and derives the run, once.

  `config` may be a built one (rebuilt from its inputs); `topology` defaults
  to this process's devices; `source` is opened from config.data when None;
  read_data=False (dry runs, benchmarks) reads no image: sizes come from a
  folder listing or sources.KNOWN_SIZES; `explicit` names the fields set by
  `--config.*` overrides (eval_inputs). Raises ConfigError, in one line.
  """
  inputs = _inputs(config)
  mode = validation.mode_of(inputs)
  validation.validate_inputs(inputs, mode)
  if mode == 'linear_eval':
    workdir = inputs.eval.pretrain_workdir
    try:
      pretrained = encoder.saved_config(workdir)
      checkpoint_step = encoder.latest_checkpoint_step(workdir)
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f'eval.pretrain_workdir={workdir!r}: {e}') from None
    inputs = eval_inputs(inputs, pretrained, explicit)
  if topology is None:
    import jax  # pylint: disable=g-import-not-at-top

    topology = Topology(jax.process_count(), jax.local_device_count())
  if mode == 'pretrain':
    validation.check_batch(
        'training.global_batch_size',
        inputs.training.global_batch_size,
        topology,
        validation.MIN_PRETRAIN_PER_DEVICE,
    )
  if mode == 'linear_eval' or inputs.eval.after_pretraining:
    validation.check_batch(
        'eval.global_batch_size', inputs.eval.global_batch_size, topology
    )
  megabytes = None
  if source is None:
    try:
      source, data_path, megabytes = sources.open_source(inputs.data, read_data)
    except ValueError as e:  # one line naming the data field
      raise ConfigError(str(e)) from None
  else:
    data_path = sources.data_path_of(source)
  data = inputs.data
  num_classes = int(source.num_classes)
  if data.num_classes > 0:
    if data.num_classes < num_classes:
      validation.fail(
          'data.num_classes',
          data.num_classes,
          f'{data.source} has {num_classes} classes: use at '
          'least that many outputs, or -1 to take them from the dataset.',
      )
    num_classes = data.num_classes
  notes = []
  derived = dict(
      mode=mode,
      # Whether image files were opened (checked) rather than only listed.
      data_read=read_data and not getattr(source, 'stand_in', False),
      num_classes=num_classes,
      splits=_check_splits(inputs, mode, source),
      **_derive(inputs, mode, source, topology, notes),
      data_path=data_path,
  )
  if data_path == sources.IN_MEMORY:
    images = getattr(source, 'images', None)
    if images is not None:  # read: what the devices will hold
      megabytes = round(sum(x.nbytes for x in images.values()) / 2**20, 1)
    derived['in_memory_mb'] = -1 if megabytes is None else megabytes
  if mode == 'linear_eval':
    # The pre-training run's own plan (its schedules shape the checkpoint).
    total = (pretrained.get('derived') or {}).get('total_steps', -1)
    finished = bool(total > 0 and checkpoint_step >= total)
    derived.update(
        pretrain_checkpoint_step=checkpoint_step, pretrain_finished=finished
    )
    if not finished:
      notes.append(
          f'evaluating step {checkpoint_step} of a pre-training run of '
          f'{total} steps: the run is unfinished'
      )
    old = pretrained.data
    if (data.source, data.image_size) != (old.source, old.image_size):
      notes.append(
          f'evaluating on {data.source} at {data.image_size}px '
          f'an encoder pre-trained on {old.source} at {old.image_size}px'
      )
  inputs.derived = ml_collections.ConfigDict(dict(derived, notes=notes))
  inputs.lock()
  return Run(inputs, source)
