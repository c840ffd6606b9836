r"""BYOL with GroupNorm + Weight Standardisation: no batch statistics at all.

Paper §3.3 and Table 2, "GN + WS": 73.9% ImageNet top-1 (vs 74.3% with BN).
GroupNorm with 16 groups and WS in every convolution of the encoder; the
paper's hyper-parameters for this variant: base lr 0.24 (x B/256), weight
decay 3e-8, tau_base 0.999 (configs.GN_WS_MODEL / GN_WS_TRAINING). The
projector and predictor use GroupNorm too (no WS on their linear layers), so
no layer anywhere uses batch statistics.

  python -m byol_jax.main --config=experiments/gn_ws.py --workdir=$WORKDIR
  python -m byol_jax.main --config=experiments/gn_ws.py:tiny --workdir=/tmp/gnws
"""

from byol_jax import configs


def get_config(arg=None):
  config = configs.build(arg, epochs=1000, model=configs.GN_WS_MODEL,
                         training=configs.GN_WS_TRAINING)
  config.paper_top1 = configs.GN_WS_PAPER_TOP1
  return config
