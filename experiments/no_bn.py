r"""BYOL with no normalisation anywhere: it collapses.

Paper Table 2, "no normalisation": 0.1% ImageNet top-1. Same recipe as
byol_bn.py; every norm layer is removed (norm kind 'none').

  python -m byol_jax.main --config=experiments/no_bn.py --workdir=$WORKDIR
  python -m byol_jax.main --config=experiments/no_bn.py:tiny --workdir=/tmp/nobn
"""

from byol_jax.config import configs
from byol_jax.results import paper


def get_config(arg=None):
  config = configs.experiment_config(
      arg,
      epochs=1000,
      model=dict(
          encoder_norm='none', projector_norm='none', predictor_norm='none'
      ),
  )
  config.paper_top1 = paper.TABLE2['no_bn']
  return config
