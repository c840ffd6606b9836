"""The run plan: a config of inputs + the dataset + the devices -> the run.

`build` runs once at start-up, after the `--config.*` overrides: the mode,
every field validated, the data opened, the splits checked, then the typed
plans (data, pre-training, probe) that the functions below the entry points
take. Nothing downstream re-derives or re-validates; WORKDIR/config.json is
`Run.record()`: the inputs and the plans as its `derived` section.

Run length, in order of precedence:
  * training.total_steps > 0 (the `steps=` option) is the step count;
  * else floor(training.num_epochs * examples / global_batch_size), the
    official BYOL code's formula (byol/configs/byol.py: num_epochs *
    train_images // batch_size);
  * the `epochs=` option sets num_epochs and clears a preset's step count
    (`tiny,epochs=30` runs 30 epochs); `--config.training.num_epochs` does
    not clear an explicit training.total_steps: PretrainPlan.total_steps_from
    says which one was used.
  * training.warmup_steps >= 0 is the warm-up; else warmup_epochs * examples
    // batch. A warm-up longer than the run is shortened to the run (logged,
    and listed in Run.notes).
"""

import dataclasses
from typing import Any, Mapping, Optional, Tuple

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
class DataPlan:
  """What the data gives the run: classes, splits and the data path."""

  num_classes: int  # the classifiers' outputs
  splits: Mapping[str, str]  # {split the run reads: its resolved name}
  path: str  # sources.IN_MEMORY or sources.STREAMING
  read: bool  # image files were opened (checked), not only listed
  in_memory_mb: Optional[float] = None  # IN_MEMORY: what the devices hold


@dataclasses.dataclass(frozen=True)
class PretrainPlan:
  """Pre-training's step counts, learning rate and batch split."""

  num_classes: int
  num_train_examples: int
  total_steps: int  # the schedules' length
  total_steps_from: str  # 'training.total_steps' or 'training.num_epochs'
  warmup_steps: int
  stop_step: int  # total_steps, or training.max_steps when earlier
  peak_learning_rate: float
  per_host_batch_size: int
  per_device_batch_size: int


@dataclasses.dataclass(frozen=True)
class ProbePlan:
  """Linear evaluation's steps and rates (probe.py), and what it evaluates."""

  num_classes: int
  num_train_examples: int
  steps: int
  peak_learning_rates: Tuple[float, ...]  # one per eval.learning_rates
  sweep_valid_split: str = ''  # '' : sweep_valid_examples held out of train
  sweep_valid_examples: int = 0
  sweep_steps: int = 0
  checkpoint_step: Optional[int] = None  # linear_eval mode: the run's step
  pretrain_finished: Optional[bool] = None


@dataclasses.dataclass(frozen=True)
class Run:
  """The built run: the locked inputs, the data source and the plans."""

  config: ml_collections.ConfigDict  # inputs only, locked
  source: Any  # read_data=False: a listing or a stand-in sources.TfdsSource
  mode: str  # 'pretrain' or 'linear_eval'
  data: DataPlan
  pretrain: Optional[PretrainPlan] = None  # mode 'pretrain'
  probe: Optional[ProbePlan] = None  # linear_eval, or eval.after_pretraining
  notes: Tuple[str, ...] = ()  # logged as the run starts

  def record(self) -> dict:
    """The inputs + `derived`: the plans, flat (config.json, --dry_run)."""
    d, data = dict(mode=self.mode), self.data
    d.update(
        data_read=data.read,
        num_classes=data.num_classes,
        splits=dict(data.splits),
        data_path=data.path,
    )
    if data.in_memory_mb is not None:
      d['in_memory_mb'] = data.in_memory_mb
    if self.pretrain:
      d.update(dataclasses.asdict(self.pretrain))
    if p := self.probe:
      d.update(
          eval_num_train_examples=p.num_train_examples,
          eval_steps=p.steps,
          eval_peak_learning_rates=list(p.peak_learning_rates),
      )
      if len(p.peak_learning_rates) > 1:
        d.update(
            eval_sweep_valid_split=p.sweep_valid_split,
            eval_sweep_valid_examples=p.sweep_valid_examples,
            eval_sweep_steps=p.sweep_steps,
        )
      if p.checkpoint_step is not None:
        d.update(
            pretrain_checkpoint_step=p.checkpoint_step,
            pretrain_finished=p.pretrain_finished,
        )
    return dict(self.config.to_dict(), derived=dict(d, notes=list(self.notes)))


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


def _pretrain_plan(config, source, topology, num_classes, notes):
  t = config.training
  n, b = (
      int(source.num_examples(config.data.pretrain_split)),
      t.global_batch_size,
  )
  total, total_from = t.total_steps, 'training.total_steps'
  if total <= 0:
    total, total_from = (
        epochs_to_steps(t.num_epochs, n, b),
        'training.num_epochs',
    )
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
  if warmup > total:
    notes.append(f"warm-up shortened from {warmup} to the run's {total} steps")
    warmup = total
  per_device, micro = b // topology.device_count, t.accumulation_steps
  validation.check(
      per_device % micro == 0,
      'training.accumulation_steps',
      micro,
      f'must divide the per-device batch of {per_device} '
      f'(training.global_batch_size={b} over {topology.device_count} '
      'devices).',
  )
  bn = [k for k, v in config.model.items() if k.endswith('_norm') and v == 'bn']
  if micro > 1 and bn:
    notes.append(
        f'training.accumulation_steps={micro}: {", ".join(bn)}=bn normalises '
        f'each micro-batch of {b // micro} examples (all devices) with its '
        f'own statistics (ghost BN), not the batch of {b}'
    )
  return PretrainPlan(
      num_classes=num_classes,
      num_train_examples=n,
      total_steps=int(total),
      total_steps_from=total_from,
      warmup_steps=int(warmup),
      stop_step=int(total if t.max_steps < 0 else min(t.max_steps, total)),
      peak_learning_rate=schedules.peak_learning_rate(t.base_learning_rate, b),
      per_host_batch_size=b // topology.process_count,
      per_device_batch_size=per_device,
  )


def _probe_plan(config, source, num_classes, **pretrained) -> ProbePlan:
  e = config.eval
  n = source.num_examples(e.train_split)
  # eval.num_epochs full passes of whole batches.
  epoch_steps = lambda examples: max(1, examples // e.global_batch_size)
  plan = ProbePlan(
      num_classes=num_classes,
      num_train_examples=n,
      steps=int(e.num_epochs * epoch_steps(n)),
      peak_learning_rates=tuple(
          schedules.peak_learning_rate(r, e.global_batch_size)
          for r in e.learning_rates
      ),
      **pretrained,
  )
  if len(e.learning_rates) == 1:
    return plan
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
  return dataclasses.replace(
      plan,
      sweep_valid_split=valid_split,
      sweep_valid_examples=valid,
      sweep_steps=int(e.num_epochs * epoch_steps(rest)),
  )


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
      pretrained_config = encoder.saved_config(workdir)
      checkpoint_step = encoder.latest_checkpoint_step(workdir)
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f'eval.pretrain_workdir={workdir!r}: {e}') from None
    inputs = eval_inputs(inputs, pretrained_config, explicit)
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
  notes, pretrained = [], {}
  if mode == 'linear_eval':
    # The pre-training run's own plan (its schedules shape the checkpoint).
    total = (pretrained_config.get('derived') or {}).get('total_steps', -1)
    finished = bool(total > 0 and checkpoint_step >= total)
    pretrained = dict(
        checkpoint_step=checkpoint_step, pretrain_finished=finished
    )
    if not finished:
      notes.append(
          f'evaluating step {checkpoint_step} of a pre-training run of '
          f'{total} steps: the run is unfinished'
      )
    old = pretrained_config.data
    if (data.source, data.image_size) != (old.source, old.image_size):
      notes.append(
          f'evaluating on {data.source} at {data.image_size}px '
          f'an encoder pre-trained on {old.source} at {old.image_size}px'
      )
  splits = _check_splits(inputs, mode, source)
  pretrain = probe = None
  if mode == 'pretrain':
    pretrain = _pretrain_plan(inputs, source, topology, num_classes, notes)
  if mode == 'linear_eval' or inputs.eval.after_pretraining:
    probe = _probe_plan(inputs, source, num_classes, **pretrained)
  if data_path != sources.IN_MEMORY:
    megabytes = None
  elif (images := getattr(source, 'images', None)) is not None:
    megabytes = round(sum(x.nbytes for x in images.values()) / 2**20, 1)
  elif megabytes is None:
    megabytes = -1
  data_plan = DataPlan(
      num_classes=num_classes,
      splits=splits,
      path=data_path,
      read=read_data and not getattr(source, 'stand_in', False),
      in_memory_mb=megabytes,
  )
  inputs.lock()
  return Run(inputs, source, mode, data_plan, pretrain, probe, tuple(notes))
