"""Linear evaluation of a frozen encoder (the paper's protocol), end to end.

Centre-crop features (features.py), the probe's learning rate chosen on
held-out data and the probe trained at it (probe.py states the protocol),
test top-1 / top-5 and kNN top-1, and the pre-training's online classifier
scored too. Every host computes the same numbers on all-gathered features;
only process 0 writes files.
"""

import json
from typing import Optional

from absl import logging
import jax

from byol_jax import encoder as encoder_lib
from byol_jax import losses
from byol_jax import resume
from byol_jax import workdir as workdir_lib
from byol_jax.evaluation import features
from byol_jax.evaluation import probe
from byol_jax.methods import networks


def _probe(config, source, params, state, num_classes, devices, test=None):
  """Selects the rate, trains and tests a linear probe on one encoder."""
  e, d = config.eval, config.derived
  params = networks.restrict(params, ('encoder',))
  state = networks.restrict(state, ('encoder',))
  if test is None:
    test = features.extract_features(
        config, source, params, state, split=e.test_split, devices=devices
    )
  sweep = len(e.learning_rates) > 1
  # The sweep and the feature-based probe need every training example's
  # features; the augmented probe alone needs only the kNN reference set.
  every = sweep or not e.augment
  train = features.extract_features(
      config,
      source,
      params,
      state,
      split=e.train_split,
      max_examples=None if every else config.logging.knn_max_train_examples,
      devices=devices,
  )
  results = {}
  chosen = 0
  if sweep:
    valid = None
    if d.eval_sweep_valid_split:
      valid = features.extract_features(
          config,
          source,
          params,
          state,
          split=d.eval_sweep_valid_split,
          devices=devices,
      )
    chosen, results['sweep'] = probe.sweep_learning_rate(
        config, source, train, num_classes, valid
    )
    results.update(
        sweep_on='centre-crop features',
        sweep_valid_split=d.eval_sweep_valid_split
        or f'{d.eval_sweep_valid_examples} of {e.train_split}',
        sweep_valid_examples=int(d.eval_sweep_valid_examples),
    )
  peak = d.eval_peak_learning_rates[chosen]
  clf_params = probe.train_final_probe(
      config, source, params, state, train, num_classes, peak, devices
  )
  logits = jax.jit(probe.classifier(num_classes).apply)(clf_params, test[0])
  top5 = min(5, num_classes)
  results.update(
      {
          'top1': float(losses.topk_correct(logits, test[1], 1).mean()),
          'top5': float(losses.topk_correct(logits, test[1], top5).mean()),
          'knn_top1': features.knn_top1(config, num_classes, train, test),
          'num_train': int(d.eval_num_train_examples),
          'num_test': int(len(test[1])),
          'epochs': int(e.num_epochs),
          'steps': int(d.eval_steps),
          'base_learning_rate': float(e.learning_rates[chosen]),
          'learning_rate': float(peak),
          'global_batch_size': int(e.global_batch_size),
          'augment': bool(e.augment),
      }
  )
  return results


def online_top1(params, test, num_classes: int) -> Optional[float]:
  """Test top-1 of the pre-training's online classifier, or None without one.

  The official code scores it on the test split too. None when `params` hold no
  classifier or its class count differs from the evaluation data's.
  """
  clf = params.get('classifier/linear') if hasattr(params, 'get') else None
  if clf is None or clf['w'].shape[-1] != num_classes:
    return None
  logits = jax.jit(probe.classifier(num_classes).apply)(
      {'classifier/linear': clf}, test[0]
  )
  return float(losses.topk_correct(logits, test[1], 1).mean())


def _percent(x):
  return f'{100. * x:.2f}%'


def run_linear_eval(
    config,
    workdir,
    params,
    state,
    *,
    source,
    tag: str = '',
    devices=None,
    extra: Optional[dict] = None,
) -> dict:
  """Linear evaluation of a frozen encoder; writes WORKDIR/eval_results.json.

  Returns:
    {'top1', 'top5' (top-min(5, classes)), 'knn_top1', 'num_train',
    'num_test', 'epochs', 'steps', 'learning_rate', 'base_learning_rate',
    'sweep' (held-out top-1 per base rate), 'online_top1', 'tag', ...},
    accuracies in [0, 1]; with eval.random_baseline also 'random_init', the
    same for the encoder's random initialisation.
  """
  resume.check_built(config)
  num_classes = config.derived.num_classes
  enc_params = networks.restrict(params, ('encoder',))
  enc_state = networks.restrict(state, ('encoder',))
  test = features.extract_features(
      config,
      source,
      enc_params,
      enc_state,
      split=config.eval.test_split,
      devices=devices,
  )
  results = _probe(
      config, source, enc_params, enc_state, num_classes, devices, test=test
  )
  online = online_top1(params, test, num_classes)
  if online is not None:
    results['online_top1'] = online
  results.update(tag=tag, **(extra or {}))
  logging.info(
      'Linear eval%s: top-1 %s, top-%d %s, kNN top-1 %s (%d train / '
      '%d test images, %d steps)',
      f' [{tag}]' if tag else '',
      _percent(results['top1']),
      min(5, num_classes),
      _percent(results['top5']),
      _percent(results['knn_top1']),
      results['num_train'],
      results['num_test'],
      results['steps'],
  )
  if config.eval.random_baseline:
    rparams, rstate = encoder_lib.random_encoder(config)
    results['random_init'] = _probe(
        config, source, rparams, rstate, num_classes, devices
    )
    logging.info(
        'trained encoder top-1 %s vs random encoder top-1 %s',
        _percent(results['top1']),
        _percent(results['random_init']['top1']),
    )
  if jax.process_index() == 0:
    path = workdir_lib.eval_results_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + '.tmp')
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)  # readers never see a half-written file
    logging.info('Wrote %s', path)
  return results


def run_linear_eval_from_workdir(
    config, workdir, *, source, extra: Optional[dict] = None
) -> dict:
  """run_linear_eval of config.eval.pretrain_workdir's latest checkpoint."""
  resume.check_built(config)
  pretrained = encoder_lib.load_pretrained(config.eval.pretrain_workdir)
  return run_linear_eval(
      config,
      workdir,
      pretrained.params,
      pretrained.state,
      source=source,
      extra={
          'pretrain_workdir': pretrained.workdir,
          'checkpoint_step': pretrained.step,
          'pretrain_finished': bool(config.derived.pretrain_finished),
          'data_source': config.data.source,
          **(extra or {}),
      },
  )
