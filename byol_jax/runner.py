"""Runs one experiment config in a workdir: what `python -m byol_jax.main` does.

Kept apart from main.py, which defines absl flags when imported, so that other
entry points (byol_jax.reproduce, tests) run experiments without its flags.
"""

import json
import logging as logging_lib

from absl import logging
import jax

from byol_jax import plan
from byol_jax import resume
from byol_jax import workdir as workdir_lib


def run(config, workdir: str, *, topology=None, explicit=frozenset(),
        on_checked=None) -> dict:
  """Builds the run from `config` and runs it in `workdir`; returns a summary.

  Pre-training (resumed from the workdir's latest checkpoint, if any), then
  linear evaluation of the final encoder when config.eval.after_pretraining
  (skipped when WORKDIR/eval_results.json already holds it: a rerun of a
  finished run does nothing). With eval.pretrain_workdir set: linear
  evaluation of that run's encoder only.

  Args:
    config: an experiment config of inputs (get_config + overrides).
    workdir: the run directory (local or gs://).
    topology: plan.Topology (default: this process's devices).
    explicit: dotted names of the fields set by `--config.*` overrides
      (plan.build).
    on_checked: called once the run is built and the workdir's checkpoint
      checked against it (main.py turns INFO logging back on there, so that
      a refused start prints one line).

  Returns:
    pretrain.run's summary (plus 'eval' when evaluated), or the linear
    evaluation's results in 'linear_eval' mode.

  Raises:
    plan.ConfigError: before anything compiles, for a config that cannot run
      (or would resume a checkpoint trained under another config).
  """
  built = plan.build(config, topology=topology, explicit=explicit)
  config, source = built.config, built.source
  from byol_jax import pretrain  # pylint: disable=g-import-not-at-top
  if config.derived.mode == 'pretrain':
    pretrain.check_workdir(config, workdir)  # before anything is logged
  if on_checked is not None:
    on_checked()
  logging.info('Config (inputs and derived values):\n%s', config)
  for note in config.derived.notes:
    logging.warning('Note: %s.', note)
  logging.info('Process %d of %d, %d local device(s) of %d: %s',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  from byol_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
  if config.derived.mode == 'linear_eval':
    done = _done_eval(config, workdir, config.derived.pretrain_checkpoint_step)
    if done is not None:
      return done
    return linear_eval.run_linear_eval_from_workdir(
        config, workdir, source=source,
        extra={'eval_inputs': eval_signature(config)})
  summary = pretrain.run(config, workdir, source=source)
  if (config.eval.after_pretraining and not summary['preempted'] and
      summary['step'] >= config.derived.total_steps):
    done = _done_eval(config, workdir, summary['step'])
    if done is not None:
      summary['eval'] = done
      return summary
    state = pretrain.load_latest_state(config, workdir)
    summary['eval'] = linear_eval.run_linear_eval(
        config, workdir, state.online_params, state.online_state,
        source=source, extra={'checkpoint_step': summary['step'],
                              'eval_inputs': eval_signature(config)})
  return summary


def eval_signature(config) -> dict:
  """What a linear evaluation's numbers depend on besides the encoder.

  Args:
    config: the built run config (ml_collections.ConfigDict with a `derived`
      section, as configs.build returns it).

  Returns:
    A flat {field: value} dict, as JSON gives it back (tuples as lists).
  """
  return json.loads(json.dumps(resume.flatten({
      'eval': config.eval.to_dict(), 'seed': config.seed,
      'data': config.data.to_dict(), 'splits': config.derived.splits.to_dict(),
      'num_classes': config.derived.num_classes})))


def _done_eval(config, workdir, step):
  """eval_results.json when it holds this step's evaluation under config."""
  path = workdir_lib.eval_results_path(workdir)
  if not path.exists():
    return None
  results = json.loads(path.read_text())
  if (results.get('checkpoint_step') == step and
      results.get('eval_inputs') == eval_signature(config)):
    logging.info('Linear evaluation of step %d already in %s; skipped.', step,
                 path)
    return results
  return None


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO records of chatty libraries (orbax logs every save step)."""

  def filter(self, record):
    return record.levelno >= logging_lib.WARNING or not any(
        f'/{lib}/' in record.pathname for lib in ('orbax', 'etils'))


def quiet_libraries() -> None:
  """Keeps the console to our progress lines (entry points call this)."""
  logging.get_absl_handler().addFilter(_QuietLibraries())
