r"""Quick start: GN+WS BYOL on the bundled 8x8 digits, on a laptop CPU.

Pre-trains a tiny ResNet with GroupNorm + WS (no batch statistics anywhere)
on scikit-learn's digits (no download), then runs linear evaluation and
prints the trained encoder's accuracy next to a randomly initialised one's.
It is experiments/gn_ws.py:tiny with the random-encoder baseline turned on
(tests/results/test_tiny_scale.py checks both, and the margin).

  python -m byol_jax.main --config=experiments/quickstart.py \
      --workdir=/tmp/byol_quickstart
"""

from byol_jax.config import configs
from byol_jax.config import presets


def get_config(arg=None):
  options = configs.parse_options(arg, configs.COMMON_OPTIONS)
  if not options.get('cifar10'):
    options.setdefault('tiny', True)
  config = configs.experiment_config(
      arg,
      options=options,
      epochs=1000,
      model=presets.GN_WS_MODEL,
      training=presets.GN_WS_TRAINING,
  )
  config.paper_top1 = presets.GN_WS_PAPER_TOP1
  config.eval.random_baseline = True
  return config
