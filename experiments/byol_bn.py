r"""Vanilla BYOL: BatchNorm in encoder, projector and predictor.

Paper Table 2, "BN": 74.3% ImageNet top-1 (linear eval), ResNet-50, 1000
epochs, batch 4096, LARS, lr 0.2 x B/256, wd 1.5e-6, tau_base 0.996.

  python -m byol_jax.main --config=experiments/byol_bn.py --workdir=$WORKDIR
  python -m byol_jax.main --config=experiments/byol_bn.py:tiny --workdir=/tmp/bn
"""

from byol_jax.config import configs
from byol_jax.results import paper


def get_config(arg=None):
  config = configs.experiment_config(arg, epochs=1000)
  config.paper_top1 = paper.TABLE2['byol_bn']
  return config
