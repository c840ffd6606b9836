r"""Linear evaluation of a pre-trained encoder (the paper's protocol).

Frozen encoder; linear classifier trained with SGD + Nesterov momentum 0.9,
no weight decay, cosine lr, 80 epochs, batch 1024, random-resized crop + flip;
centre-crop test (BYOL Appendix C.1). Results: WORKDIR/eval_results.json.
The model and data come from the pre-training run's config.json.

  python -m byol_jax.main \
      --config=experiments/linear_eval.py:pretrain=/path/to/pretrain_workdir \
      --workdir=/path/to/eval_workdir
"""

from byol_jax import configs
from byol_jax import encoder


def get_config(arg=None):
  options = configs.parse_options(arg, configs.COMMON_OPTIONS + ('pretrain',))
  config = configs.build(arg, options=options)
  config.mode = 'linear_eval'
  pretrain = options.get('pretrain', '')
  config.eval.pretrain_workdir = pretrain
  if pretrain:
    # The pre-training run's model and data describe the encoder to load.
    run = encoder.load_config(pretrain)  # clear error when it is missing.
    config.model.update(run.model)
    config.data.update(run.data)
    config.seed = run.seed
  return configs.finalize(config)
