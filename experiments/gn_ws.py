r"""BYOL with GroupNorm + Weight Standardisation: no batch statistics at all.

Paper §3.3 and Table 2, "GN + WS": 73.9% ImageNet top-1 (vs 74.3% with BN).
Weight Standardisation on every convolutional and linear parameter (encoder
convolutions, projector and predictor linear layers) and GroupNorm with 16
groups wherever BN was; the paper's hyper-parameters for this variant: base
lr 0.24 (x B/256), weight decay 3e-8, tau_base 0.999 (presets.GN_WS_MODEL /
GN_WS_TRAINING).

Option (besides the common ones): `ws=conv` standardises the encoder's
convolutions only (plain linear layers in the projector and predictor), the
variant this codebase ran before it followed §3.3 exactly; kept for
comparison.

  python -m byol_jax.main --config=experiments/gn_ws.py --workdir=$WORKDIR
  python -m byol_jax.main --config=experiments/gn_ws.py:tiny --workdir=/tmp/gnws
  python -m byol_jax.main --config=experiments/gn_ws.py:tiny,ws=conv \
      --workdir=/tmp/gnws_conv
"""

from byol_jax.config import configs
from byol_jax.config import presets

WS_CHOICES = ('all', 'conv')


def get_config(arg=None):
  options = configs.parse_options(arg, configs.COMMON_OPTIONS + ('ws',))
  ws = options.get('ws', 'all')
  if ws not in WS_CHOICES:
    raise ValueError(
        f'gn_ws option ws={ws!r}: use all (paper §3.3: every '
        'conv and linear layer) or conv (convolutions only).'
    )
  model = dict(presets.GN_WS_MODEL, heads_ws=ws == 'all')
  config = configs.experiment_config(
      arg,
      epochs=1000,
      model=model,
      training=presets.GN_WS_TRAINING,
      options=options,
  )
  config.paper_top1 = presets.GN_WS_PAPER_TOP1
  return config
