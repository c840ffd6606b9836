"""Runs one experiment config in a workdir: what `python -m byol_jax.main` does.

Kept apart from main.py, which defines absl flags when imported, so that other
entry points (byol_jax.reproduce, tests) run experiments without its flags.
"""

import logging as logging_lib

from absl import logging
import jax

from byol_jax import experiment


def run(config, workdir: str) -> dict:
  """Runs the experiment `config` in `workdir`; returns its summary.

  mode 'pretrain': pre-training (resumed from the workdir's latest
  checkpoint, if any), then linear evaluation of the final encoder when
  config.eval.after_pretraining. mode 'linear_eval': evaluates
  config.eval.pretrain_workdir's encoder. Raises experiment.ConfigError
  (before anything compiles) for a config that cannot run.
  """
  experiment.validate(config, check_steps=False)
  source = experiment.resolve_dataset(config)
  experiment.validate(config)
  logging.info('Config:\n%s', config)
  logging.info('Process %d of %d, %d local device(s) of %d: %s',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  if config.mode == 'linear_eval':
    from byol_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
    return linear_eval.run_linear_eval_from_workdir(config, workdir)
  from byol_jax import pretrain  # pylint: disable=g-import-not-at-top
  summary = pretrain.run(config, workdir, source=source)
  if (config.eval.after_pretraining and not summary['preempted'] and
      summary['step'] >= config.training.total_steps):
    from byol_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
    state = pretrain.load_latest_state(config, workdir)
    summary['eval'] = linear_eval.run_linear_eval(
        config, workdir, state.online_params, state.online_state,
        source=source)
  return summary


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO records of chatty libraries (orbax logs every save step)."""

  def filter(self, record):
    return record.levelno >= logging_lib.WARNING or not any(
        f'/{lib}/' in record.pathname for lib in ('orbax', 'etils'))


def quiet_libraries() -> None:
  """Keeps the console to our progress lines (entry points call this)."""
  logging.get_absl_handler().addFilter(_QuietLibraries())
