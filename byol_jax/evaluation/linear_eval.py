"""Linear evaluation of a frozen encoder end to end (probe.py: the protocol).

Test top-1 / top-5, kNN top-1 and the online classifier's top-1; every host
computes the same numbers on all-gathered features, process 0 writes them.
"""

import functools
import json
from typing import Optional

from absl import logging
import jax

from byol_jax import encoder as encoder_lib
from byol_jax import losses
from byol_jax.evaluation import features
from byol_jax.evaluation import probe
from byol_jax.methods import networks
from byol_jax.training import workdir as workdir_lib


def _probe(run, params, state, devices):
  """(results, test features) of a linear probe on one encoder."""
  config, source, plan = run.config, run.source, run.probe
  e, num_classes = config.eval, plan.num_classes
  params, state = (networks.restrict(x, ('encoder',)) for x in (params, state))
  extract = functools.partial(
      features.extract_features, config, source, params, state, devices=devices
  )
  test = extract(split=e.test_split)
  sweep = len(e.learning_rates) > 1
  # The sweep and the feature-based probe need every training example's
  # features; the augmented probe alone needs only the kNN reference set.
  every = sweep or not e.augment
  train = extract(
      split=e.train_split,
      max_examples=None if every else config.logging.knn_max_train_examples,
  )
  results, chosen = {}, 0
  if sweep:
    valid = plan.sweep_valid_split
    chosen, results['sweep'] = probe.sweep_learning_rate(
        config, plan, source, train, extract(split=valid) if valid else None
    )
    results.update(
        sweep_on='centre-crop features',
        sweep_valid_split=valid
        or f'{plan.sweep_valid_examples} of {e.train_split}',
        sweep_valid_examples=int(plan.sweep_valid_examples),
    )
  peak = plan.peak_learning_rates[chosen]
  clf_params = probe.train_final_probe(
      config, plan, source, params, state, train, peak, devices
  )
  results.update(
      top1=_accuracy(clf_params, test, num_classes),
      top5=_accuracy(clf_params, test, num_classes, min(5, num_classes)),
      knn_top1=features.knn_top1(config, num_classes, train, test),
      num_train=int(plan.num_train_examples),
      num_test=len(test[1]),
      epochs=int(e.num_epochs),
      steps=plan.steps,
      base_learning_rate=float(e.learning_rates[chosen]),
      learning_rate=float(peak),
      global_batch_size=e.global_batch_size,
      augment=bool(e.augment),
  )
  return results, test


def _accuracy(clf_params, test, num_classes: int, k: int = 1) -> float:
  logits = jax.jit(probe.classifier(num_classes).apply)(clf_params, test[0])
  return float(losses.topk_correct(logits, test[1], k).mean())


def online_top1(params, test, num_classes: int) -> Optional[float]:
  """The online classifier's test top-1 (as the official code), or None."""
  clf = params.get('classifier/linear')
  if clf is None or clf['w'].shape[-1] != num_classes:
    return None
  return _accuracy({'classifier/linear': clf}, test, num_classes)


def run_linear_eval(
    run, workdir, params, state, *, tag='', devices=None, extra=None
) -> dict:
  """Linear evaluation of an encoder: the results, in eval_results.json too."""
  config, num_classes = run.config, run.probe.num_classes
  results, test = _probe(run, params, state, devices)
  online = online_top1(params, test, num_classes)
  if online is not None:
    results['online_top1'] = online
  results.update(tag=tag, **(extra or {}))
  logging.info(
      f'Linear eval{f" [{tag}]" if tag else ""}: top-1 '
      f'{100 * results["top1"]:.2f}%, top-{min(5, num_classes)} '
      f'{100 * results["top5"]:.2f}%, kNN top-1 '
      f'{100 * results["knn_top1"]:.2f}% ({results["num_train"]} train / '
      f'{results["num_test"]} test images, {results["steps"]} steps)'
  )
  if config.eval.random_baseline:
    rparams, rstate = encoder_lib.random_encoder(config, num_classes)
    results['random_init'], _ = _probe(run, rparams, rstate, devices)
    logging.info(
        f'trained encoder top-1 {100 * results["top1"]:.2f}% vs random '
        f'encoder top-1 {100 * results["random_init"]["top1"]:.2f}%'
    )
  if jax.process_index() == 0:
    path = workdir_lib.eval_results_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + '.tmp')
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)  # readers never see a half-written file
    logging.info('Wrote %s', path)
  return results


def run_linear_eval_from_workdir(run, workdir, *, extra=None):
  """run_linear_eval of eval.pretrain_workdir's latest checkpoint."""
  pretrained = encoder_lib.load_pretrained(run.config.eval.pretrain_workdir)
  extra = {
      'pretrain_workdir': pretrained.workdir,
      'checkpoint_step': pretrained.step,
      'pretrain_finished': bool(run.probe.pretrain_finished),
      'data_source': run.config.data.source,
      **(extra or {}),
  }
  params, state = pretrained.params, pretrained.state
  return run_linear_eval(run, workdir, params, state, extra=extra)
