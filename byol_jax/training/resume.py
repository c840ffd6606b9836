"""The resume contract: each checkpoint records `trajectory(run)`; a run that
would resume under another stops unless checkpoint.allow_changed_config."""

import datetime
import json

from absl import logging
import jax
import ml_collections

from byol_jax.config import configs
from byol_jax.config import validation
from byol_jax.training import workdir as workdir_lib


def _deep_update(base: dict, new: dict) -> dict:
  for key, value in new.items():
    if isinstance(value, dict) and isinstance(base.get(key), dict):
      _deep_update(base[key], value)
    else:
      base[key] = value
  return base


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A built config from a run's config.json (its defaults filled in)."""
  tree = _deep_update(configs.experiment_config(None).to_dict(), saved)
  return ml_collections.ConfigDict(tree)


# Not the trajectory: when to stop, where data lives (derived.data_path
# records what it decides), the inputs the derived step counts replace.
_NOT_TRAJECTORY = frozenset("""
    training.max_steps training.num_epochs training.total_steps
    training.warmup_epochs training.warmup_steps
    training.modified_init_chunk_size data.data_dir data.cache_dir
    data.in_memory_on data.max_in_memory_mb data.num_classes
""".split())
_TRAJECTORY_DERIVED = (
    'num_train_examples num_classes total_steps warmup_steps data_path'.split()
)


def flatten(tree: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1} (lists stay whole)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def trajectory(run) -> dict:
  """{dotted field: value} of what shapes a plan.Run's pre-training (sorted)."""
  record = run.record()
  tree = {k: record[k] for k in ('method', 'seed', 'model', 'training', 'data')}
  tree['derived'] = {k: record['derived'].get(k) for k in _TRAJECTORY_DERIVED}
  flat = flatten(tree)
  return {k: flat[k] for k in sorted(flat) if k not in _NOT_TRAJECTORY}


def changes(old: dict, new: dict) -> dict:
  """{field: (old, new)} where two flat dicts differ (None where missing)."""
  keys = sorted(set(old) | set(new))
  return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def describe_changes(diff: dict) -> str:
  """A diff as one line: field 'old' -> 'new', ..."""
  return ', '.join(f'{k} {old!r} -> {new!r}' for k, (old, new) in diff.items())


def check_resume(run, ckpt) -> dict:
  """The trajectory changes a plan.Run resumes under from `ckpt` (ConfigError:
  another network, or any change without checkpoint.allow_changed_config)."""
  latest = ckpt.latest_extra()
  if latest is None:
    return {}
  step, extra = latest
  where = f'{ckpt.directory} holds step {step} of a run'
  if (old := extra.get('trajectory')) is None:
    raise validation.ConfigError(
        f'{where} from an older version, recording no config: use a fresh '
        '--workdir, or resume it with the version that wrote it.'
    )
  diff = changes(old, trajectory(run))
  network = ('method', 'model.', 'derived.num_classes')
  if structural := {k: v for k, v in diff.items() if k.startswith(network)}:
    raise validation.ConfigError(
        f'{where} with another network: {describe_changes(structural)}; a '
        'checkpoint cannot be resumed under another architecture (not even '
        'with checkpoint.allow_changed_config): use a fresh --workdir.'
    )
  if diff and not run.config.checkpoint.allow_changed_config:
    raise validation.ConfigError(
        f'{where} trained under another config: {describe_changes(diff)}. '
        'Resume with the old values, use a fresh --workdir, or pass '
        '--config.checkpoint.allow_changed_config=true to resume anyway (e.g. '
        f'to extend a finished run; recorded in {workdir_lib.CONFIG_HISTORY}).'
    )
  if diff:
    logging.warning(
        'Resuming step %d under a changed config (allowed by '
        'checkpoint.allow_changed_config): %s',
        step,
        describe_changes(diff),
    )
  return diff


def write_config(
    run, workdir, *, start_step: int, trajectory_changes: dict
) -> None:
  """Process 0: config.json (Run.record); config_history.jsonl on a change."""
  if jax.process_index() != 0:
    return
  path = workdir_lib.config_path(workdir)
  text = json.dumps(run.record(), indent=2, sort_keys=True)
  old = path.read_text() if path.exists() else None
  diff = changes(flatten(json.loads(old or text)), flatten(json.loads(text)))
  if old is None or diff or trajectory_changes:
    now = datetime.datetime.now(datetime.timezone.utc)
    entry = {
        'time': now.isoformat(timespec='seconds'),
        'start_step': start_step,
        'config_changes': diff,
        'trajectory_changes': trajectory_changes,
    }
    with workdir_lib.config_history_path(workdir).open('a') as f:
      f.write(json.dumps(entry) + '\n')
  if old != text:
    tmp = path.parent / (path.name + '.tmp')
    tmp.write_text(text)
    tmp.replace(path)  # a reader never sees a half-written config.json
