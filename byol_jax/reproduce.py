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

Table 2 (paper): vanilla BYOL with BN (74.3%), no normalisation (0.1%),
modified init (65.7%), GN + WS (73.9%). Table 1: the BN / LN / none grid over
(encoder, projector, predictor) for BYOL, and over (encoder, projector) for
SimCLR, which has no predictor (experiments/ablation.py).
"""

import dataclasses
import itertools
import json
import sys
import time
from typing import Optional, Sequence

from absl import logging
from etils import epath

from byol_jax import configs
from byol_jax import report
from byol_jax import workdir as workdir_lib

EXPERIMENTS_DIR = configs.EXPERIMENTS_DIR
SCALES = ('tiny', 'cifar10')
TABLES = (1, 2)
NORMS = configs.TABLE1_NORMS
# Failures recorded by this command (variant -> message); a variant listed
# here is retried on the next run.
FAILURES_FILE = 'failures.json'


@dataclasses.dataclass(frozen=True)
class Variant:
  """One cell of a table: an experiment config and its options.

  Attributes:
    name: the variant's workdir name under WORKDIR, e.g. 'gn_ws'.
    config: the experiment config, experiments/<config>.py.
    options: the variant's config options besides the scale's, e.g.
      'method=byol,encoder=bn,projector=ln,predictor=none'.
  """
  name: str
  config: str
  options: str = ''

  def config_arg(self, scale: str, dataset: str = '') -> str:
    """The config string after `experiments/<config>.py:`.

    Args:
      scale: 'tiny' or 'cifar10'.
      dataset: a data source for option dataset=, or '' for the scale's.

    Returns:
      '<scale>[,<options>][,dataset=<dataset>]'.
    """
    opts = [scale] + ([self.options] if self.options else [])
    if dataset:
      opts.append(f'dataset={dataset}')
    return ','.join(opts)

  def command(self, scale: str, dataset: str, workdir, overrides=()) -> str:
    """The equivalent `python -m byol_jax.main` command line.

    Args:
      scale: 'tiny' or 'cifar10'.
      dataset: a data source, or '' for the scale's.
      workdir: the variant's run directory.
      overrides: (dotted field, value) pairs, as --config.<field>=<value>.

    Returns:
      The command as one shell line (values are not quoted).
    """
    flags = ''.join(f' --config.{k}={v}' for k, v in overrides)
    return (f'python -m byol_jax.main --config=experiments/{self.config}.py:'
            f'{self.config_arg(scale, dataset)} --workdir={workdir}{flags}')


def table_variants(table: int) -> list[Variant]:
  """The variants of paper Table 1 or 2, in table order.

  Args:
    table: 1 (the norm grid: 27 BYOL and 9 SimCLR cells) or 2 (BN, no norm,
      modified init, GN + WS).

  Returns:
    The Variants.

  Raises:
    ValueError: `table` is not in TABLES.
  """
  if table == 2:
    return [Variant('bn', 'byol_bn'), Variant('no_norm', 'no_bn'),
            Variant('modified_init', 'modified_init'),
            Variant('gn_ws', 'gn_ws')]
  if table == 1:
    out = []
    for enc, proj, pred in itertools.product(NORMS, repeat=3):
      out.append(Variant(
          f'byol_enc-{enc}_proj-{proj}_pred-{pred}', 'ablation',
          f'method=byol,encoder={enc},projector={proj},predictor={pred}'))
    for enc, proj in itertools.product(NORMS, repeat=2):
      out.append(Variant(f'simclr_enc-{enc}_proj-{proj}', 'ablation',
                         f'method=simclr,encoder={enc},projector={proj}'))
    return out
  raise ValueError(f'--table={table}: use one of {", ".join(map(str, TABLES))}.')


def select(variants: Sequence[Variant], names: Sequence[str]) -> list[Variant]:
  """The variants named in `names`, in table order.

  Args:
    variants: the table's variants.
    names: variant names to keep; empty: all.

  Returns:
    The selected Variants, in the order of `variants`.

  Raises:
    ValueError: a name is not a variant of the table.
  """
  if not names:
    return list(variants)
  known = {v.name for v in variants}
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f'--variants: {", ".join(unknown)} not in this table; '
                     f'use some of: {", ".join(sorted(known))}.')
  return [v for v in variants if v.name in names]


def load_config(variant: Variant, scale: str, dataset: str = '',
                overrides=(), experiments_dir=EXPERIMENTS_DIR):
  """The variant's config, exactly as `--config=experiments/...:<arg>` gives.

  Args:
    variant: the table cell.
    scale: 'tiny' or 'cifar10' (a common config option, configs.py).
    dataset: optional data source (option dataset=).
    overrides: (dotted field, value) pairs, as --config.<field>=<value>.
    experiments_dir: where the experiment configs live.

  Returns:
    The config of inputs (runner.run builds it).

  Raises:
    ValueError: an override names no field of the config, or its value does
      not convert to the field's type.
    FileNotFoundError: the experiment config does not exist.
  """
  config = configs.load_experiment(variant.config,
                                   variant.config_arg(scale, dataset),
                                   experiments_dir=experiments_dir)
  for key, value in overrides:
    *parents, leaf = key.split('.')
    node = config
    try:
      for p in parents:
        node = node[p]
      node[leaf]  # pylint: disable=pointless-statement
    except (KeyError, AttributeError, TypeError):
      raise ValueError(f'--override {key}={value}: the config has no field '
                       f'{key!r}.') from None
    # The type of the default, as ml_collections' --config.<field> flags do.
    node[leaf] = _cast(value, node[leaf], key)
  return config


def _cast(value: str, old, key: str):
  if isinstance(old, bool):
    if value.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'--override {key}={value!r}: use true or false.')
    return value.lower() in ('true', '1')
  try:
    return type(old)(value)
  except ValueError:
    raise ValueError(f'--override {key}={value!r}: expected a '
                     f'{type(old).__name__}.') from None


def parse_overrides(items: Sequence[str]) -> list[tuple[str, str]]:
  """Parses --override flags.

  Args:
    items: 'field=value' strings, e.g. 'training.total_steps=100'.

  Returns:
    (field, value) pairs, both stripped; values stay strings (load_config
    converts them).

  Raises:
    ValueError: an item has no '=' or an empty field.
  """
  out = []
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise ValueError(f'--override {item!r}: use field=value, e.g. '
                       'training.total_steps=100.')
    out.append((key.strip(), value.strip()))
  return out


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


def run_variant(variant: Variant, config, workdir: epath.Path) -> dict:
  """Pre-trains and evaluates one variant (resuming what is there).

  Args:
    variant: the table cell.
    config: its config of inputs (load_config).
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
              overrides=(), experiments_dir=EXPERIMENTS_DIR,
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
  if scale not in SCALES:
    raise ValueError(f'--scale={scale!r}: use one of {", ".join(SCALES)}.')
  chosen = select(table_variants(table), variants)
  root = epath.Path(workdir)
  variant_configs = [load_config(v, scale, dataset, overrides,
                                 experiments_dir) for v in chosen]
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
                variants: Sequence[Variant], failures: Optional[dict] = None):
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
    out = reproduce(int(f.table), f.scale, f.workdir, variants=f.variants or (),
                    dataset=f.dataset, overrides=parse_overrides(f.override or ()),
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
  flags.DEFINE_enum('scale', 'tiny', list(SCALES),
                    'tiny: digits on a CPU; cifar10: CIFAR-10, ResNet-18, GPU.')
  flags.DEFINE_string('workdir', None, 'Root directory of the variants.')
  flags.DEFINE_list('variants', [], 'Only these variants (default: all).')
  flags.DEFINE_string('dataset', '', 'Data source for every variant, e.g. '
                      'folder:/data/cifar10-jpg (default: the scale\'s).')
  flags.DEFINE_multi_string('override', [], 'field=value applied to every '
                            'variant, e.g. training.total_steps=100.')
  flags.DEFINE_string('experiments_dir', str(EXPERIMENTS_DIR),
                      'Directory of the experiment configs.')
  flags.DEFINE_bool('dry_run', False, 'Print the commands, run nothing.')
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
