r"""Quick start: GN+WS BYOL on the bundled 8x8 digits, on a laptop CPU.

Pre-trains a tiny ResNet (GroupNorm + WS, no batch statistics) on
scikit-learn's digits (no download), then runs linear evaluation and prints
the trained encoder's accuracy next to a randomly initialised one's.

  python -m byol_jax.main --config=experiments/quickstart.py \
      --workdir=/tmp/byol_quickstart
"""

from byol_jax import configs


def get_config(arg=None):
  options = configs.parse_options(arg, configs.COMMON_OPTIONS)
  options.setdefault('tiny', True)
  config = configs.build(
      arg, options=options,
      model=dict(encoder_norm='gn', projector_norm='gn', predictor_norm='gn',
                 gn_groups=16, encoder_ws=True),
      training=dict(base_learning_rate=0.24, weight_decay=3e-8,
                    base_ema=0.99))
  config.eval.random_baseline = True
  return configs.finalize(config)
