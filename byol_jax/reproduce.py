r"""Reproduce the paper's tables at small scale: every variant, then a report.

    python -m byol_jax.reproduce --table=2 --scale=tiny --workdir=/tmp/table2
    python -m byol_jax.reproduce --table=1 --scale=tiny --workdir=/tmp/table1
    python -m byol_jax.reproduce --table=2 --scale=cifar10 \
        --dataset=folder:/data/cifar10-jpg --workdir=/tmp/table2_cifar10

Each variant of the table is one normal experiment config
(experiments/<name>.py with the scale's option: `tiny` or `cifar10`), run by
byol_jax.runner.run (what byol_jax.main runs) in WORKDIR/<variant>: pre-training, then linear
evaluation. Nothing is special-cased: the command prints each variant's
`python -m byol_jax.main` equivalent, and running those by hand gives the
same workdirs. Then byol_jax/report.py writes WORKDIR/table<N>.md (the
paper's number beside ours, collapse statistics, wall time) and
WORKDIR/plots/*.png.

Resumable: a variant with eval_results.json is done and skipped; any other
resumes from its latest checkpoint (the runner's exact resume). A killed
reproduction therefore continues where it stopped when rerun.

The variants themselves (Table 2: BN, no normalisation, modified init,
GN + WS; Table 1: the BN / LN / none grid) and their configs are
variants.py's.
"""

import json
import sys
import time
from typing import Optional, Sequence

from absl import logging
from etils import epath

from byol_jax import report
from byol_jax import variants as variants_lib
from byol_jax import workdir as workdir_lib

# Failures recorded by this command (variant -> message); a variant listed
# here is retried on the next run.
FAILURES_FILE = 'failures.json'


def is_done(workdir: epath.Path) -> bool:
  """Whether a variant is finished.

  Args:
    workdir: the variant's run directory.

  Returns:
    True when its eval_results.json exists.
  """
  return workdir_lib.eval_results_path(workdir).exists()


def _read_failures(root: epath.Path) -> dict:
  path = root / FAILURES_FILE
  return json.loads(path.read_text()) if path.exists() else {}


def _write_failures(root: epath.Path, failures: dict) -> None:
  path = root / FAILURES_FILE
  if failures:
    path.write_text(json.dumps(failures, indent=2))
  elif path.exists():
    path.unlink()


def run_variant(variant: variants_lib.Variant, config,
                workdir: epath.Path) -> dict:
  """Pre-trains and evaluates one variant (resuming what is there).

  Args:
    variant: the table cell.
    config: its config of inputs (variants.load_config).
    workdir: its run directory.

  Returns:
    runner.run's summary dict.

  Raises:
    ValueError: the config turns off the linear evaluation.
    KeyboardInterrupt: the run was preempted (its checkpoint is saved).
  """
  from byol_jax import runner  # pylint: disable=g-import-not-at-top
  if not config.eval.after_pretraining:
    raise ValueError(f'{variant.name}: eval.after_pretraining is False; the '
                     'table needs the linear evaluation of every variant.')
  summary = runner.run(config, str(workdir))
  if summary.get('preempted'):
    raise KeyboardInterrupt(f'{variant.name} was interrupted at step '
                            f'{summary["step"]} (checkpoint saved)')
  return summary


def reproduce(table: int, scale: str, workdir, *, variants=(), dataset='',
              overrides=(), experiments_dir=variants_lib.EXPERIMENTS_DIR,
              dry_run: bool = False) -> dict:
  """Runs (or resumes) every selected variant, then writes the report.

  Args:
    table: 1 or 2 (the paper's table).
    scale: 'tiny' or 'cifar10'.
    workdir: root directory; each variant runs in workdir/<variant name>.
    variants: names of the variants to run (default: all of the table).
    dataset: data source for every variant (default: the scale's).
    overrides: (field, value) pairs applied to every variant's config.
    experiments_dir: where the experiment configs live.
    dry_run: only print the commands.

  Returns:
    {'commands': [...], 'ran': [names], 'skipped': [names], 'failed':
    {name: message}, 'report': report.write_report's dict or None}.

  Raises:
    ValueError: an unknown scale, table or variant, a bad override or an
      invalid config (plan.ConfigError); all before any training.
    KeyboardInterrupt: a variant was interrupted (other failures are
      recorded in WORKDIR/failures.json and the next variant runs).
  """
  scales = variants_lib.SCALES
  if scale not in scales:
    raise ValueError(f'--scale={scale!r}: use one of {", ".join(scales)}.')
  chosen = variants_lib.select(variants_lib.table_variants(table), variants)
  root = epath.Path(workdir)
  variant_configs = [variants_lib.load_config(v, scale, dataset, overrides,
                                              experiments_dir)
                     for v in chosen]
  from byol_jax import plan  # pylint: disable=g-import-not-at-top
  for config in variant_configs:  # every config error before training.
    plan.build(config, read_data=False)
  commands = [v.command(scale, dataset, root / v.name, overrides)
              for v in chosen]
  out = {'commands': commands, 'ran': [], 'skipped': [], 'failed': {},
         'report': None}
  if dry_run:
    return out
  root.mkdir(parents=True, exist_ok=True)
  failures = _read_failures(root)
  for variant, config, command in zip(chosen, variant_configs, commands):
    vdir = root / variant.name
    if is_done(vdir):
      logging.info('%s: done (%s exists), skipped.', variant.name,
                   workdir_lib.eval_results_path(vdir))
      out['skipped'].append(variant.name)
      continue
    logging.info('%s: %s', variant.name, command)
    start = time.time()
    try:
      run_variant(variant, config, vdir)
    except KeyboardInterrupt:
      raise
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


def write_table(table: int, scale: str, root: epath.Path,
                variants: Sequence[variants_lib.Variant],
                failures: Optional[dict] = None):
  """WORKDIR/table<N>.md and WORKDIR/plots/*.png from the variants' workdirs.

  Variants without metrics (not started, or failed before logging) are listed
  under the table instead of stopping the report.

  Args:
    table: 1 or 2, for the file name and title.
    scale: the scale, for the title.
    root: the reproduction's WORKDIR.
    variants: the variants to report, in table order.
    failures: {variant name: error message} to list under the table.

  Returns:
    report.write_report's dict (table_path, table, plots, runs).

  Raises:
    ValueError: no variant has metrics yet.
  """
  has_metrics = {v.name: workdir_lib.metrics_path(root / v.name).exists()
                 for v in variants}
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
      [str(p) for p in present], root, table_name=f'table{table}.md',
      title=f'Paper Table {table}, scale {scale}', notes=notes,
      group_by_method=table == 1)


def main(argv):
  """Runs `python -m byol_jax.reproduce` and prints the table.

  Exit code 2 on a usage or config error (one line on stderr), 1 when a
  variant failed, else 0.

  Args:
    argv: the command line left after absl's flags (ignored).
  """
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from byol_jax import runner  # pylint: disable=g-import-not-at-top
  runner.quiet_libraries()
  f = flags.FLAGS
  try:
    overrides = variants_lib.parse_overrides(f.override or ())
    out = reproduce(int(f.table), f.scale, f.workdir, variants=f.variants or (),
                    dataset=f.dataset, overrides=overrides,
                    experiments_dir=f.experiments_dir, dry_run=f.dry_run)
  except (ValueError, FileNotFoundError) as e:
    print(f'reproduce: {e}', file=sys.stderr)
    sys.exit(2)
  if f.dry_run:
    print('\n'.join(out['commands']))
    return
  rep = out['report']
  print(rep['table'], end='')
  print(f'Wrote {rep["table_path"]} and plots in {f.workdir}/plots '
        f'(ran {len(out["ran"])}, skipped {len(out["skipped"])} done, '
        f'{len(out["failed"])} failed).')
  if out['failed']:
    sys.exit(1)


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum('table', '2', ['1', '2'], 'The paper table to reproduce.')
  flags.DEFINE_enum('scale', 'tiny', list(variants_lib.SCALES),
                    'tiny: digits on a CPU; cifar10: CIFAR-10, ResNet-18, GPU.')
  flags.DEFINE_string('workdir', None, 'Root directory of the variants.')
  flags.DEFINE_list('variants', [], 'Only these variants (default: all).')
  flags.DEFINE_string('dataset', '', 'Data source for every variant, e.g. '
                      'folder:/data/cifar10-jpg (default: the scale\'s).')
  flags.DEFINE_multi_string('override', [], 'field=value applied to every '
                            'variant, e.g. training.total_steps=100.')
  flags.DEFINE_string('experiments_dir', str(variants_lib.EXPERIMENTS_DIR),
                      'Directory of the experiment configs.')
  flags.DEFINE_bool('dry_run', False, 'Print the commands, run nothing.')
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
