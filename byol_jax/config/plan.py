"""The run plan: a config of inputs + the dataset + the devices -> the run;
WORKDIR/config.json is `Run.record()`."""

import dataclasses
from typing import Any, Mapping, Optional, Tuple

import jax
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


# Run.record()'s key of a plan's field, where it is not the field's name
# (ProbePlan's: 'eval_' + name); '': not recorded (the data's num_classes is).
_RECORD_KEYS = {
    ('data', 'path'): 'data_path',
    ('data', 'read'): 'data_read',
    ('probe', 'num_classes'): '',
    ('probe', 'checkpoint_step'): 'pretrain_checkpoint_step',
    ('probe', 'pretrain_finished'): 'pretrain_finished',
}


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
    derived = dict(mode=self.mode)
    sweep = self.probe and len(self.probe.peak_learning_rates) > 1
    plans = dict(data=self.data, pretrain=self.pretrain, probe=self.probe)
    for name, plan in plans.items():
      for field, value in (dataclasses.asdict(plan) if plan else {}).items():
        default = f'eval_{field}' if name == 'probe' else field
        key = _RECORD_KEYS.get((name, field), default)
        if key and value is not None and (sweep or 'sweep' not in field):
          derived[key] = list(value) if isinstance(value, tuple) else value
    derived['notes'] = list(self.notes)
    return dict(self.config.to_dict(), derived=derived)


def _inputs(config) -> ml_collections.ConfigDict:
  """An unlocked copy of config without its `derived` section."""
  tree = config.to_dict()
  tree.pop('derived', None)
  return ml_collections.ConfigDict(tree)


def eval_inputs(config, pretrained, explicit=frozenset()):
  """The pre-training run's method/model/training/data (but the data fields
  `explicit` or dataset= names) + config's rest; explicit others refused."""
  for field in sorted(explicit):
    section = field.split('.')[0]
    if section in ('method', 'model', 'training'):
      raise ConfigError(
          f'{field}: linear evaluation takes {section} from the pre-training '
          f'run (eval.pretrain_workdir={config.eval.pretrain_workdir!r}), '
          f'which describes its checkpoint; drop --config.{field}.'
      )
  merged = _inputs(pretrained)
  merged.update(mode='linear_eval', seed=config.seed, options=config.options)
  for section in ('eval', 'logging', 'checkpoint'):
    merged[section] = ml_collections.ConfigDict(config[section].to_dict())
  chosen = {f.split('.', 1)[1] for f in explicit if f.startswith('data.')}
  options = (config.options or '').split(',')
  if 'dataset' in {o.partition('=')[0].strip() for o in options}:
    chosen.add('source')
  for field in chosen:
    merged.data[field] = config.data[field]
  return merged


def _check_splits(config, mode: str, source) -> dict:
  """{split: resolved name} of every split the run reads, each checked."""
  needed = {}
  if mode == 'pretrain':
    needed['data.pretrain_split'] = config.data.pretrain_split
    if config.logging.knn_every_steps:
      knn = 'logging.knn_every_steps (reference: linear_train)'
      needed[knn] = 'linear_train'
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


def _pretrain_plan(config, source, topology, num_classes, notes):
  t = config.training
  n = int(source.num_examples(config.data.pretrain_split))
  b = t.global_batch_size
  steps_of = lambda epochs: int(epochs * n) // b  # official byol/configs
  total, total_from = t.total_steps, 'training.total_steps'
  if total <= 0:
    total, total_from = steps_of(t.num_epochs), 'training.num_epochs'
    validation.check(
        total > 0,
        'training.num_epochs',
        t.num_epochs,
        f'gives 0 steps of batch {b} over {n} examples; raise it, lower '
        'training.global_batch_size, or set training.total_steps.',
    )
  warmup = t.warmup_steps if t.warmup_steps >= 0 else steps_of(t.warmup_epochs)
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
    validation.check(
        per_device // micro >= validation.MIN_PRETRAIN_PER_DEVICE,
        'training.accumulation_steps',
        micro,
        f'leaves micro-batches of {per_device // micro} example per device; '
        f'BN needs at least {validation.MIN_PRETRAIN_PER_DEVICE}.',
    )
    notes.append(
        f'training.accumulation_steps={micro}: {", ".join(bn)}=bn normalises '
        f'each micro-batch of {b // micro} examples with its own statistics '
        f'(ghost BN), not the batch of {b}, and updates its moving averages '
        'once per micro-batch'
    )
  return PretrainPlan(
      num_classes=num_classes,
      num_train_examples=n,
      total_steps=total,
      total_steps_from=total_from,
      warmup_steps=warmup,
      stop_step=total if t.max_steps < 0 else min(t.max_steps, total),
      peak_learning_rate=schedules.peak_learning_rate(t.base_learning_rate, b),
      per_host_batch_size=b // topology.process_count,
      per_device_batch_size=per_device,
  )


def _probe_plan(config, source, num_classes, **pretrained) -> ProbePlan:
  e = config.eval
  n = source.num_examples(e.train_split)
  steps = lambda count: e.num_epochs * max(1, count // e.global_batch_size)
  if len(e.learning_rates) > 1:
    # The dataset's own validation split apart from the probe's (ImageNet:
    # train[:10000], official byol/utils/dataset.py), else held out of train.
    try:
      ours = [source.resolve_split(s) for s in (e.train_split, e.test_split)]
      valid = source.resolve_split('linear_valid')
      valid_split = '' if valid in ours else 'linear_valid'
    except ValueError:
      valid_split = ''
    if valid_split:
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
    pretrained.update(
        sweep_valid_split=valid_split,
        sweep_valid_examples=valid,
        sweep_steps=steps(rest),
    )
  return ProbePlan(
      num_classes=num_classes,
      num_train_examples=n,
      steps=steps(n),
      peak_learning_rates=tuple(
          schedules.peak_learning_rate(r, e.global_batch_size)
          for r in e.learning_rates
      ),
      **pretrained,
  )


def build(
    config,
    *,
    topology: Optional[Topology] = None,
    source=None,
    read_data: bool = True,
    explicit=frozenset(),
) -> Run:
  """Validates, opens the data (unless `source`) and derives the run, once;
  read_data=False (dry runs) reads no image. Raises ConfigError, one line."""
  inputs = _inputs(config)
  mode = validation.validate_inputs(inputs)
  probing = mode == 'linear_eval' or inputs.eval.after_pretraining
  notes, pretrained = [], {}
  if mode == 'linear_eval':
    workdir = inputs.eval.pretrain_workdir
    try:
      pretrained_config = encoder.saved_config(workdir)
      step = encoder.latest_checkpoint_step(workdir)
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f'eval.pretrain_workdir={workdir!r}: {e}') from None
    inputs = eval_inputs(inputs, pretrained_config, explicit)
    # The pre-training run's own plan (its schedules shape the checkpoint).
    total = pretrained_config.derived.total_steps
    finished = step >= total
    pretrained = dict(checkpoint_step=step, pretrain_finished=finished)
    if not finished:
      notes.append(
          f'evaluating step {step} of a pre-training run of '
          f'{total} steps: the run is unfinished'
      )
    old, new = pretrained_config.data, inputs.data
    if (new.source, new.image_size) != (old.source, old.image_size):
      notes.append(
          f'evaluating on {new.source} at {new.image_size}px '
          f'an encoder pre-trained on {old.source} at {old.image_size}px'
      )
  topology = topology or Topology(jax.process_count(), jax.local_device_count())
  if mode == 'pretrain':
    validation.check_batch(inputs, 'training', topology)
  if probing:
    validation.check_batch(inputs, 'eval', topology)
  megabytes = None
  if source is None:
    try:
      source, data_path, megabytes = sources.open_source(inputs.data, read_data)
    except ValueError as e:  # one line naming the data field
      raise ConfigError(str(e)) from None
  else:
    in_memory = isinstance(source, sources.InMemorySource)
    data_path = sources.IN_MEMORY if in_memory else sources.STREAMING
  data = inputs.data
  num_classes = int(source.num_classes)
  if data.num_classes > 0:
    validation.check(
        data.num_classes >= num_classes,
        'data.num_classes',
        data.num_classes,
        f'{data.source} has {num_classes} classes: use at least that many '
        'outputs, or -1 to take them from the dataset.',
    )
    num_classes = data.num_classes
  splits = _check_splits(inputs, mode, source)
  pretrain = probe = None
  if mode == 'pretrain':
    pretrain = _pretrain_plan(inputs, source, topology, num_classes, notes)
  if probing:
    probe = _probe_plan(inputs, source, num_classes, **pretrained)
  if data_path != sources.IN_MEMORY:
    megabytes = None
  elif (images := getattr(source, 'images', None)) is not None:
    megabytes = round(sum(x.nbytes for x in images.values()) / 2**20, 1)
  elif megabytes is None:
    megabytes = -1
  read = read_data and not getattr(source, 'stand_in', False)
  data_plan = DataPlan(num_classes, splits, data_path, read, megabytes)
  inputs.lock()
  return Run(inputs, source, mode, data_plan, pretrain, probe, tuple(notes))
