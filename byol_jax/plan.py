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

Field checks live in validation.py, opening the data and choosing its path
in data/sources.py, and the resume contract (`trajectory`, `from_saved`) in
resume.py.
"""

import dataclasses
from typing import Any, Optional

import ml_collections

from byol_jax import encoder
from byol_jax import schedules
from byol_jax import validation
from byol_jax.data import sources

ConfigError = validation.ConfigError  # what build raises


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
    """All devices of the run: processes x local devices."""
    return self.process_count * self.local_device_count

  @classmethod
  def current(cls) -> 'Topology':
    """This run's topology (jax.distributed must already be initialised).

    Returns:
      Topology(jax.process_count(), jax.local_device_count()).
    """
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


# the pre-training run and refuses explicit overrides of them.
RUN_SECTIONS = ('method', 'model', 'training')


def option_names(options: str) -> set:
  """The option names of a config string.

  Args:
    options: the text after ':' in --config=FILE:OPTIONS, e.g.
      'tiny,dataset=digits' ('' or None: no options).

  Returns:
    The set of names, e.g. {'tiny', 'dataset'}.
  """
  return {
      item.partition('=')[0].strip()
      for item in (options or '').split(',')
      if item.strip()
  }


def eval_inputs(
    config, pretrained, explicit=frozenset()
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
          f'checkpoint; drop --config.{field}.'
      )
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


def _splits_read(config, mode: str) -> dict:
  """{config field: split name} of every split the run will read."""
  needed = {}
  if mode == 'pretrain':
    needed['data.pretrain_split'] = config.data.pretrain_split
    if config.logging.knn_every_steps:
      needed['logging.knn_every_steps (reference: linear_train)'] = (
          'linear_train'
      )
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
      raise ConfigError(
          f'{field}={split!r} cannot be read from '
          f'data.source={config.data.source!r}: {e}'
      ) from None
    if n is not None and n <= 0:
      validation.fail(field, split, f'split is empty in {config.data.source}.')
  return resolved


# ------------------------------------------------------------------ derive
def epochs_to_steps(epochs: float, num_examples: int, batch: int) -> int:
  """Training steps for a number of epochs, as official byol/configs/byol.py.

  Args:
    epochs: passes over the data (a warm-up may be a fraction).
    num_examples: examples in the pre-training split.
    batch: global batch size (examples per step).

  Returns:
    floor(epochs * num_examples / batch).
  """
  return int(epochs * int(num_examples)) // int(batch)


# Held-out examples for the probe's learning-rate sweep when the dataset has
# no validation split and eval.sweep_valid_examples is -1: a fifth of the
# training split, at most ImageNet's 10,000.
SWEEP_VALID_MAX = sources.IMAGENET_VALID_EXAMPLES


def sweep_valid_split(config, source) -> str:
  """The split the linear probe's learning rate is chosen on, or ''.

  The dataset's own 'linear_valid' split when it has one that is neither the
  probe's training split nor its test split (ImageNet: train[:10000], with
  the probes trained on train[10000:], as the official byol/utils/dataset.py
  splits it); '' otherwise, and `eval.sweep_valid_examples` of the training
  split are held out instead (probe.sweep_learning_rate).

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
  others = {
      source.resolve_split(config.eval.train_split),
      source.resolve_split(config.eval.test_split),
  }
  return '' if valid in others else 'linear_valid'


def _derive(
    config, mode: str, source, topology: Topology, read_data: bool
) -> dict:
  t, e = config.training, config.eval
  notes = []
  d = dict(
      mode=mode,
      data_read=read_data,
      process_count=topology.process_count,
      local_device_count=topology.local_device_count,
      device_count=topology.device_count,
  )
  d['num_classes'] = int(source.num_classes)
  if config.data.num_classes > 0:
    if config.data.num_classes < source.num_classes:
      validation.fail(
          'data.num_classes',
          config.data.num_classes,
          f'{config.data.source} has {source.num_classes} classes: use at '
          'least that many outputs, or -1 to take them from the dataset.',
      )
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
        validation.fail(
            'training.num_epochs',
            t.num_epochs,
            f'gives 0 steps of batch {b} over {n} examples; raise it, lower '
            'training.global_batch_size, or set training.total_steps.',
        )
    if t.warmup_steps >= 0:
      warmup, d['warmup_steps_from'] = t.warmup_steps, 'training.warmup_steps'
    else:
      warmup = epochs_to_steps(t.warmup_epochs, n, b)
      d['warmup_steps_from'] = 'training.warmup_epochs'
    if warmup > total:  # runner.py logs the notes once the run may start.
      notes.append(
          f"warm-up shortened from {warmup} to the run's " f'{total} steps'
      )
      warmup = total
    d.update(
        total_steps=int(total),
        warmup_steps=int(warmup),
        stop_step=int(total if t.max_steps < 0 else min(t.max_steps, total)),
        epochs=round(total * b / n, 4),
        peak_learning_rate=schedules.peak_learning_rate(
            t.base_learning_rate, b
        ),
        per_host_batch_size=b // topology.process_count,
        per_device_batch_size=b // topology.device_count,
    )
  if mode == 'linear_eval' or e.after_pretraining:
    n = source.num_examples(e.train_split)
    d['eval_num_train_examples'] = n
    # Steps of the probe: eval.num_epochs full passes of whole batches.
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
        if valid == -1:
          valid = max(1, min(SWEEP_VALID_MAX, n // 5))
        validation.check(
            valid < n,
            'eval.sweep_valid_examples',
            valid,
            f'must be below the {n} examples of eval.train_split '
            f'{e.train_split!r}: the learning-rate sweep trains on the rest.',
        )
        rest = n - valid
      d['eval_sweep_valid_split'] = valid_split or ''
      d['eval_sweep_valid_examples'] = valid
      d['eval_sweep_steps'] = int(
          e.num_epochs * max(1, rest // e.global_batch_size)
      )
    d['eval_per_device_batch_size'] = (
        e.global_batch_size // topology.device_count
    )
  # Whether image files were opened (checked) rather than only listed.
  d['data_read'] = d.get('data_read', True) and not getattr(
      source, 'stand_in', False
  )
  d['notes'] = notes
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
    run_derived = pretrained.get('derived')
    with inputs.unlocked():
      if 'derived' in inputs:
        del inputs['derived']
  topology = topology or Topology.current()
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
  derived = _derive(inputs, mode, source, topology, read_data)
  derived['data_path'] = data_path
  if data_path == sources.IN_MEMORY:
    images = getattr(source, 'images', None)
    if images is not None:  # read: what the devices will hold
      megabytes = round(sum(x.nbytes for x in images.values()) / 2**20, 1)
    derived['in_memory_mb'] = megabytes if megabytes is not None else -1
  if mode == 'linear_eval':
    # The pre-training run's own plan (its schedules shape the checkpoint).
    for key in (
        'num_train_examples',
        'total_steps',
        'warmup_steps',
        'peak_learning_rate',
    ):
      if key in (run_derived or {}):
        derived[f'pretrain_{key}'] = run_derived[key]
    total = derived.get('pretrain_total_steps', -1)
    derived['pretrain_checkpoint_step'] = checkpoint_step
    derived['pretrain_finished'] = bool(total > 0 and checkpoint_step >= total)
    if not derived['pretrain_finished']:
      derived['notes'].append(
          f'evaluating step {checkpoint_step} of a pre-training run of '
          f'{total} steps: the run is unfinished'
      )
    old = pretrained.data
    if (inputs.data.source, inputs.data.image_size) != (
        old.source,
        old.image_size,
    ):
      derived['notes'].append(
          f'evaluating on {inputs.data.source} at {inputs.data.image_size}px '
          f'an encoder pre-trained on {old.source} at {old.image_size}px'
      )
  with inputs.unlocked():
    inputs.derived = ml_collections.ConfigDict(derived)
  inputs.lock()
  return Run(inputs, source)
