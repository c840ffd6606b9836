r"""BYOL with GroupNorm + Weight Standardisation: no batch statistics at all.

Paper §3.3 and Table 2, "GN + WS": 73.9% ImageNet top-1 (vs 74.3% with BN).
GroupNorm with 16 groups and WS in every convolution of the encoder; the
paper's hyper-parameters for this variant: base lr 0.24 (x B/256), weight
decay 3e-8, tau_base 0.999. The projector and predictor use GroupNorm too (no
WS on their linear layers), so no layer anywhere uses batch statistics.

  python -m byol_jax.main --config=experiments/gn_ws.py --workdir=$WORKDIR
  python -m byol_jax.main --config=experiments/gn_ws.py:tiny --workdir=/tmp/gnws
"""

from byol_jax import configs


def get_config(arg=None):
  config = configs.build(
      arg, epochs=1000,
      model=dict(encoder_norm='gn', projector_norm='gn', predictor_norm='gn',
                 gn_groups=16, encoder_ws=True),  # paper §3.3
      training=dict(base_learning_rate=0.24, weight_decay=3e-8,
                    base_ema=0.999))  # paper §3.3
  config.paper_top1 = 73.9
  return configs.finalize(config)
