r"""SimCLR, the contrastive baseline of the paper's Table 1 (BN everywhere).

Same encoder, projector, augmentations and LARS optimiser as BYOL; no
predictor, no target; InfoNCE with temperature 0.1 over the global batch.
Paper Table 1 (BN encoder and projector, 300 epochs): 69.3% ImageNet top-1.
Table 1's other SimCLR cells: experiments/ablation.py:method=simclr,...

  python -m byol_jax.main --config=experiments/simclr.py --workdir=$WORKDIR
  python -m byol_jax.main --config=experiments/simclr.py:tiny \
      --workdir=/tmp/simclr
"""

from byol_jax.config import configs
from byol_jax.results import paper


def get_config(arg=None):
  config = configs.experiment_config(
      arg,
      method='simclr',
      epochs=300,
      training=dict(base_learning_rate=0.3, weight_decay=1e-6),
  )
  config.paper_top1 = paper.table1('simclr', 'bn', 'bn')  # Table 1: 69.3
  return config
