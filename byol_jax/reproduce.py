r"""Reproduce the paper's tables at small scale: every variant, then a report.

    python -m byol_jax.reproduce --table=2 --scale=tiny --workdir=/tmp/table2
    python -m byol_jax.reproduce --table=1 --scale=tiny --workdir=/tmp/table1
    python -m byol_jax.reproduce --table=2 --scale=small \
        --dataset=folder:/data/cifar10-jpg --workdir=/tmp/table2_small
    python -m byol_jax.reproduce --table=2 --scale=cifar10 \
        --dataset=folder:/data/cifar10-jpg --workdir=/tmp/table2_cifar10

Each variant is one normal experiment config (experiments/<name>.py with
the scale's option), run by runner.run (what byol_jax.main runs) in
WORKDIR/<variant>: pre-training, then linear evaluation; `--dry_run` prints
the equivalent `python -m byol_jax.main` commands. report.py then writes
WORKDIR/table<N>.md and WORKDIR/plots/.

Resumable: a variant with eval_results.json is skipped, any other resumes
from its checkpoint. A variant whose workdir holds a run of other inputs
(config.json vs the request, _NOT_COMPARED aside) is moved, under its
training lock, to WORKDIR/replaced/<variant>.<n> and trained again; when
only eval.* fields changed it is only evaluated again.
"""

import json
import sys
import time
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath

from byol_jax import plan
from byol_jax import report
from byol_jax import resume
from byol_jax import runner
from byol_jax import runs as runs_lib
from byol_jax import validation
from byol_jax import variants as variants_lib
from byol_jax import workdir as workdir_lib

# Failures recorded by this command (variant -> message); a variant listed
# here is retried on the next run.
FAILURES_FILE = 'failures.json'
# Where a variant's run under other inputs is moved before it is trained
# again: WORKDIR/replaced/<variant>.<n>.
REPLACED_DIR = 'replaced'
# Inputs that change no number of the table (prefixes of dotted fields): the
# option string (the fields it sets are compared themselves), where data and
# caches live, where in-memory arrays are held, the modified init's chunking
# (exactly merged) and the checkpoint policy.
_NOT_COMPARED = (
    'options',
    'data.data_dir',
    'data.cache_dir',
    'data.in_memory_on',
    'training.modified_init_chunk_size',
    'checkpoint.',
)


def is_done(workdir: epath.Path) -> bool:
  """Whether a variant is finished (its eval_results.json exists)."""
  return workdir_lib.eval_results_path(workdir).exists()


def changed_inputs(config, workdir: epath.Path) -> dict:
  """{field: (saved, requested)} of the inputs that differ from workdir's run.

  Empty when nothing ran there yet; _NOT_COMPARED fields are left out.
  """
  saved = runs_lib.read_json(workdir_lib.config_path(workdir))
  if saved is None:
    return {}
  saved = resume.from_saved(saved)
  del saved['derived']  # values plan.build derives from the inputs.

  def inputs(tree):
    flat = resume.flatten(json.loads(tree.to_json_best_effort()))
    return {k: v for k, v in flat.items() if not k.startswith(_NOT_COMPARED)}

  return resume.changes(inputs(saved), inputs(config))


def _move_aside(root: epath.Path, vdir: epath.Path) -> epath.Path:
  """Moves a variant's directory to WORKDIR/replaced/<variant>.<n>.

  Holds the variant's training lock while moving: a directory that a
  training run is writing is refused (workdir.WorkdirError), never moved.
  """
  n = 1
  while (root / REPLACED_DIR / f'{vdir.name}.{n}').exists():
    n += 1
  (root / REPLACED_DIR).mkdir(parents=True, exist_ok=True)
  lock = workdir_lib.TrainingLock(vdir)
  lock.acquire()
  aside = vdir.rename(root / REPLACED_DIR / f'{vdir.name}.{n}')
  workdir_lib.lock_path(aside).unlink()
  lock.release()
  return aside


def _read_failures(root: epath.Path) -> dict:
  path = root / FAILURES_FILE
  return json.loads(path.read_text()) if path.exists() else {}


def _write_failures(root: epath.Path, failures: dict) -> None:
  path = root / FAILURES_FILE
  if failures:
    path.write_text(json.dumps(failures, indent=2))
  elif path.exists():
    path.unlink()


def run_variant(
    variant: variants_lib.Variant, config, workdir: epath.Path
) -> dict:
  """Pre-trains and evaluates one variant (resuming what is there)."""
  if not config.eval.after_pretraining:
    raise ValueError(
        f'{variant.name}: eval.after_pretraining is False; the '
        'table needs the linear evaluation of every variant.'
    )
  summary = runner.run(config, str(workdir))
  if summary.get('preempted'):
    raise KeyboardInterrupt(
        f'{variant.name} was interrupted at step '
        f'{summary["step"]} (checkpoint saved)'
    )
  return summary


def reproduce(
    table: int,
    scale: str,
    workdir,
    *,
    variants=(),
    dataset='',
    overrides=(),
    experiments_dir=variants_lib.EXPERIMENTS_DIR,
    dry_run: bool = False,
) -> dict:
  """Runs (or resumes) every selected variant, then writes the report.

  Args:
    table: 1 or 2 (the paper's table).
    scale: 'tiny', 'small' or 'cifar10'.
    workdir: root directory; each variant runs in workdir/<variant name>.
    variants: names of the variants to run (default: all of the table).
    dataset: data source for every variant (default: the scale's).
    overrides: (field, value) pairs applied to every variant's config.
    experiments_dir: where the experiment configs live.
    dry_run: only print the commands.

  Returns:
    {'commands': [...], 'ran': [names], 'skipped': [names], 'failed':
    {name: message}, 'replaced': {name: where its run under other inputs
    was moved}, 'report': report.write_report's dict or None}.

  Raises:
    ValueError: an unknown scale, table or variant, a bad override, an
      invalid config (plan.ConfigError) or an unreadable config.json in a
      variant's workdir; all before any training.
    KeyboardInterrupt: a variant was interrupted (other failures are
      recorded in WORKDIR/failures.json and the next variant runs).
  """
  scales = variants_lib.SCALES
  if scale not in scales:
    raise ValueError(f'--scale={scale!r}: use one of {", ".join(scales)}.')
  chosen = variants_lib.select(variants_lib.table_variants(table), variants)
  root = epath.Path(workdir)
  if any(field == 'eval.pretrain_workdir' for field, _ in overrides):
    raise validation.ConfigError(
        '--override=eval.pretrain_workdir: reproduce pre-trains every variant '
        'itself; evaluate another run with python -m byol_jax.main '
        '--config=experiments/linear_eval.py '
        '--config.eval.pretrain_workdir=DIR.'
    )
  variant_configs = [
      variants_lib.variant_config(v, scale, dataset, overrides, experiments_dir)
      for v in chosen
  ]
  for config in variant_configs:  # every config error before training.
    plan.build(config, read_data=False)
  commands = [
      v.command(scale, dataset, root / v.name, overrides) for v in chosen
  ]
  out = {
      'commands': commands,
      'ran': [],
      'skipped': [],
      'failed': {},
      'replaced': {},
      'report': None,
  }
  if dry_run:
    return out
  changed = [
      changed_inputs(c, root / v.name) for v, c in zip(chosen, variant_configs)
  ]
  root.mkdir(parents=True, exist_ok=True)
  failures = _read_failures(root)
  for variant, config, command, diff in zip(
      chosen, variant_configs, commands, changed
  ):
    vdir = root / variant.name
    if diff and all(k.startswith('eval.') for k in diff):
      logging.warning(
          '%s: evaluation inputs changed since the run in %s (%s):'
          ' evaluating its encoder again, eval_results.json is '
          'replaced.',
          variant.name,
          vdir,
          resume.describe_changes(diff),
      )
    elif diff:
      aside = _move_aside(root, vdir)
      logging.warning(
          '%s: inputs changed since the run in %s (%s): it is '
          'moved to %s and the variant trains again.',
          variant.name,
          vdir,
          resume.describe_changes(diff),
          aside,
      )
      out['replaced'][variant.name] = str(aside)
    elif is_done(vdir):
      logging.info(
          '%s: done (%s exists), skipped.',
          variant.name,
          workdir_lib.eval_results_path(vdir),
      )
      out['skipped'].append(variant.name)
      continue
    logging.info('%s: %s', variant.name, command)
    start = time.time()
    try:
      run_variant(variant, config, vdir)
    except (KeyboardInterrupt, workdir_lib.WorkdirError):
      raise  # a variant another run writes is not a failed variant
    except Exception as e:  # pylint: disable=broad-except
      # A diverged variant (NaN loss) is a result too: record it, go on.
      failures[variant.name] = f'{type(e).__name__}: {e}'
      _write_failures(root, failures)
      out['failed'][variant.name] = failures[variant.name]
      logging.error('%s failed: %s', variant.name, failures[variant.name])
      continue
    failures.pop(variant.name, None)
    _write_failures(root, failures)
    out['ran'].append(variant.name)
    logging.info('%s: finished in %.0fs.', variant.name, time.time() - start)
  out['report'] = write_table(table, scale, root, chosen, failures)
  return out


def write_table(
    table: int,
    scale: str,
    root: epath.Path,
    variants: Sequence[variants_lib.Variant],
    failures: Optional[dict] = None,
):
  """WORKDIR/table<N>.md and plots/; variants without metrics listed below."""
  has_metrics = {
      v.name: workdir_lib.metrics_path(root / v.name).exists() for v in variants
  }
  present = [root / v.name for v in variants if has_metrics[v.name]]
  missing = [v.name for v in variants if not has_metrics[v.name]]
  if not present:
    raise ValueError(f'no variant of table {table} in {root} has metrics yet.')
  notes = []
  if missing:
    notes.append('Not run yet: ' + ', '.join(missing) + '.')
  for name, message in sorted((failures or {}).items()):
    notes.append(f'Failed: {name}: {message}')
  return report.write_report(
      [str(p) for p in present],
      root,
      table_name=f'table{table}.md',
      title=f'Paper Table {table}, scale {scale}',
      notes=notes,
      group_by_method=table == 1,
  )


def main(argv):
  """`python -m byol_jax.reproduce`: exit 2 on a bad input, 1 on a failure."""
  del argv
  runner.quiet_libraries()
  f = flags.FLAGS
  try:
    overrides = variants_lib.parse_overrides(f.override or ())
    out = reproduce(
        int(f.table),
        f.scale,
        f.workdir,
        variants=f.variants or (),
        dataset=f.dataset,
        overrides=overrides,
        experiments_dir=f.experiments_dir,
        dry_run=f.dry_run,
    )
  except (ValueError, FileNotFoundError) as e:
    print(f'reproduce: {e}', file=sys.stderr)
    sys.exit(2)
  if f.dry_run:
    print('\n'.join(out['commands']))
    return
  rep = out['report']
  print(rep['table'], end='')
  print(
      f'Wrote {rep["table_path"]} and plots in {f.workdir}/plots '
      f'(ran {len(out["ran"])}, skipped {len(out["skipped"])} done, '
      f'{len(out["failed"])} failed, {len(out["replaced"])} moved to '
      f'{REPLACED_DIR}/ under changed inputs).'
  )
  if out['failed']:
    sys.exit(1)


if __name__ == '__main__':
  flags.DEFINE_enum('table', '2', ['1', '2'], 'The paper table to reproduce.')
  flags.DEFINE_enum(
      'scale',
      'tiny',
      list(variants_lib.SCALES),
      'tiny: digits on a CPU; small: CIFAR-10 on a CPU with the '
      "paper's optimiser; cifar10: CIFAR-10, ResNet-18, GPU.",
  )
  flags.DEFINE_string('workdir', None, 'Root directory of the variants.')
  flags.DEFINE_list('variants', [], 'Only these variants (default: all).')
  flags.DEFINE_string(
      'dataset',
      '',
      'Data source for every variant, e.g. '
      "folder:/data/cifar10-jpg (default: the scale's).",
  )
  flags.DEFINE_multi_string(
      'override',
      [],
      'field=value applied to every ' 'variant, e.g. training.total_steps=100.',
  )
  flags.DEFINE_string(
      'experiments_dir',
      str(variants_lib.EXPERIMENTS_DIR),
      'Directory of the experiment configs.',
  )
  flags.DEFINE_bool('dry_run', False, 'Print the commands, run nothing.')
  flags.mark_flags_as_required(['workdir'])
  app.run(main, flags_parser=report.parse_flags)
