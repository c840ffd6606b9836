r"""Reproduce the paper's tables at small scale: every variant, then a report.

    python -m byol_jax.reproduce --table=2 --scale=small \
        --dataset=folder:/data/cifar10-jpg --workdir=/tmp/table2_small

Each variant runs as byol_jax.main would (`--dry_run` prints those commands)
in WORKDIR/<variant>, resumably; then WORKDIR/table<N>.md and plots/.
"""

import itertools
import json
import sys
import time

from absl import app
from absl import flags
from absl import logging
from etils import epath

from byol_jax.config import configs
from byol_jax.config import plan
from byol_jax.results import report
from byol_jax.results import runs as runs_lib
from byol_jax.results import variants as variants_lib
from byol_jax.training import resume
from byol_jax.training import runner
from byol_jax.training import workdir as workdir_lib

FAILURES_FILE = 'failures.json'  # variant -> message; retried next time.
REPLACED_DIR = 'replaced'
# Inputs that change no number of the table: derived values, the option string
# (its fields are compared), data locations, exact chunking, checkpoint policy.
_NOT_COMPARED = (
    'derived.',
    'options',
    'data.data_dir',
    'data.cache_dir',
    'data.in_memory_on',
    'training.modified_init_chunk_size',
    'checkpoint.',
)


def changed_inputs(config, workdir: epath.Path) -> dict:
  """{field: (saved, requested)} of the inputs (_NOT_COMPARED aside) changed."""
  saved = runs_lib.read_json(workdir_lib.config_path(workdir))
  if saved is None:
    return {}
  flat = lambda tree: resume.flatten(json.loads(tree.to_json_best_effort()))
  diff = resume.changes(flat(resume.from_saved(saved)), flat(config))
  return {k: d for k, d in diff.items() if not k.startswith(_NOT_COMPARED)}


def _move_aside(root: epath.Path, vdir: epath.Path) -> epath.Path:
  """vdir -> root/replaced/<variant>.<n>, under its training lock."""
  names = (root / REPLACED_DIR / f'{vdir.name}.{n}' for n in itertools.count(1))
  aside = next(path for path in names if not path.exists())
  aside.parent.mkdir(parents=True, exist_ok=True)
  lock = workdir_lib.TrainingLock(vdir)
  lock.acquire()  # a directory a training run writes is refused, not moved.
  vdir.rename(aside)
  workdir_lib.lock_path(aside).unlink()
  lock.release()
  return aside


def run_variant(variant, config, workdir: epath.Path) -> None:
  """Pre-trains and evaluates one variant (resuming what is there)."""
  summary = runner.run(config, str(workdir))
  if summary.get('preempted'):
    raise KeyboardInterrupt(
        f'{variant.name} was interrupted at step '
        f'{summary["step"]} (checkpoint saved)'
    )


def reproduce(
    table: int,
    scale: str,
    workdir,
    *,
    variants=(),
    dataset='',
    overrides=(),
    experiments_dir=configs.EXPERIMENTS_DIR,
    dry_run: bool = False,
) -> dict:
  """Runs (or resumes) every selected variant, then writes the report.

  Args: table 1 or 2; scale 'tiny', 'small' or 'cifar10'; each variant runs in
  workdir/<name>; variants: names to run (default all); dataset: every
  variant's source (default the scale's); overrides: (field, value) pairs for
  every config; dry_run: only the commands.

  Returns {'commands', 'ran', 'skipped', 'failed': {name: message}, 'replaced':
  {name: where its old run went}, 'report': write_report's dict or None}.

  Raises ValueError (bad scale, table, variant, override, config or config.json)
  before any training; KeyboardInterrupt when a variant is interrupted (other
  failures go to WORKDIR/failures.json and the next variant runs).
  """
  if scale not in (scales := configs.SCALES):
    raise ValueError(f'--scale={scale!r}: use one of {", ".join(scales)}.')
  chosen = variants_lib.select(variants_lib.table_variants(table), variants)
  root = epath.Path(workdir)
  variant_configs = [
      variants_lib.variant_config(v, scale, dataset, overrides, experiments_dir)
      for v in chosen
  ]
  for v, config in zip(chosen, variant_configs):  # every error before training
    if config.eval.pretrain_workdir:
      raise ValueError(
          '--override=eval.pretrain_workdir: reproduce pre-trains every variant'
          ' itself; evaluate another run with python -m byol_jax.main --config='
          'experiments/linear_eval.py --config.eval.pretrain_workdir=DIR.'
      )
    if not config.eval.after_pretraining:
      raise ValueError(
          f'{v.name}: eval.after_pretraining is False; the table needs the '
          'linear evaluation of every variant.'
      )
    plan.build(config, read_data=False)
  commands = [
      v.command(scale, dataset, root / v.name, overrides) for v in chosen
  ]
  out = dict(commands=commands, ran=[], skipped=[], failed={}, replaced={})
  if dry_run:
    return dict(out, report=None)
  changed = [
      changed_inputs(c, root / v.name) for v, c in zip(chosen, variant_configs)
  ]
  root.mkdir(parents=True, exist_ok=True)
  failures_path = root / FAILURES_FILE
  failures = runs_lib.read_json(failures_path) or {}
  for v, config, cmd, diff in zip(chosen, variant_configs, commands, changed):
    vdir = root / v.name
    if diff:
      then = 'its encoder is evaluated again, eval_results.json replaced'
      if not all(k.startswith('eval.') for k in diff):
        out['replaced'][v.name] = str(_move_aside(root, vdir))
        then = f'moved to {out["replaced"][v.name]}, trained again'
      logging.warning(
          f'{v.name}: inputs changed since the run in {vdir} '
          f'({resume.describe_changes(diff)}): {then}.'
      )
    elif workdir_lib.eval_results_path(vdir).exists():
      logging.info('%s: done, skipped.', v.name)
      out['skipped'].append(v.name)
      continue
    logging.info('%s: %s', v.name, cmd)
    start = time.time()
    try:
      run_variant(v, config, vdir)
    except (KeyboardInterrupt, workdir_lib.WorkdirError):
      raise  # a variant another run writes is not a failed variant
    except Exception as e:  # pylint: disable=broad-except
      # A diverged variant (NaN loss) is a result too: record it, go on.
      out['failed'][v.name] = failures[v.name] = f'{type(e).__name__}: {e}'
      logging.error('%s failed: %s', v.name, failures[v.name])
    else:
      failures.pop(v.name, None)
      out['ran'].append(v.name)
      logging.info('%s: finished in %.0fs.', v.name, time.time() - start)
    if failures:
      failures_path.write_text(json.dumps(failures, indent=2))
    else:
      failures_path.unlink(missing_ok=True)
  present = [
      v.name for v in chosen if workdir_lib.metrics_path(root / v.name).exists()
  ]
  if not present:
    raise ValueError(f'no variant of table {table} in {root} has metrics yet.')
  missing = [v.name for v in chosen if v.name not in present]
  notes = ['Not run yet: ' + ', '.join(missing) + '.'] if missing else []
  notes += [f'Failed: {n}: {m}' for n, m in sorted(failures.items())]
  out['report'] = report.write_report(
      [str(root / name) for name in present],
      root,
      table_name=f'table{table}.md',
      title=f'Paper Table {table}, scale {scale}',
      notes=notes,
      group_by_method=table == 1,
  )
  return out


def main(argv):
  """`python -m byol_jax.reproduce`: exit 2 on a bad input, 1 on a failure."""
  del argv
  runner.quiet_libraries()
  f = flags.FLAGS
  try:
    out = reproduce(
        int(f.table),
        f.scale,
        f.workdir,
        variants=f.variants,
        dataset=f.dataset,
        overrides=variants_lib.parse_overrides(f.override),
        experiments_dir=f.experiments_dir,
        dry_run=f.dry_run,
    )
  except (ValueError, FileNotFoundError) as e:
    report.exit_one_line(f'reproduce: {e}')
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
      list(configs.SCALES),
      'tiny: digits on a CPU; small: CIFAR-10 on a CPU with the '
      "paper's optimiser; cifar10: CIFAR-10, ResNet-18, GPU.",
  )
  flags.DEFINE_string('workdir', None, 'Root directory of the variants.')
  flags.DEFINE_list('variants', [], 'Only these variants (default: all).')
  flags.DEFINE_string(
      'dataset', '', "Data source of every variant (default: the scale's)."
  )
  flags.DEFINE_multi_string(
      'override',
      [],
      'field=value applied to every variant, e.g. training.total_steps=100.',
  )
  flags.DEFINE_string(
      'experiments_dir',
      str(configs.EXPERIMENTS_DIR),
      'Directory of the experiment configs.',
  )
  flags.DEFINE_bool('dry_run', False, 'Print the commands, run nothing.')
  flags.mark_flags_as_required(['workdir'])
  app.run(main, flags_parser=report.parse_flags)
