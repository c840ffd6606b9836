r"""Linear evaluation of a pre-trained encoder (the paper's protocol).

Frozen encoder; linear classifier trained with SGD + Nesterov momentum 0.9,
no weight decay, cosine lr, 80 epochs, batch 1024, random-resized crop + flip;
centre-crop test (BYOL Appendix C.1). Results: WORKDIR/eval_results.json.
The model and data come from the pre-training run's config.json.

  python -m byol_jax.main \
      --config=experiments/linear_eval.py:pretrain=/path/to/pretrain_workdir \
      --workdir=/path/to/eval_workdir
"""

import json
import pathlib

from byol_jax import configs


def get_config(arg=None):
  options = configs.parse_options(arg, configs.COMMON_OPTIONS + ('pretrain',))
  config = configs.build(arg, options=options)
  config.mode = 'linear_eval'
  pretrain = options.get('pretrain', '')
  config.eval.pretrain_workdir = pretrain
  if pretrain:
    # The pre-training run's model and data describe the encoder to load.
    saved = pathlib.Path(pretrain) / 'config.json'
    if not saved.exists():
      raise ValueError(f'linear_eval option pretrain={pretrain!r}: no '
                       f'{saved}; pass the --workdir of a pre-training run.')
    run = json.loads(saved.read_text())
    config.model.update(run['model'])
    config.data.update(run['data'])
    config.seed = run['seed']
  return configs.finalize(config)
