r"""SimCLR, the contrastive baseline of the paper's Table 1 (BN everywhere).

Same encoder, projector, augmentations and LARS optimiser as BYOL; no
predictor, no target; InfoNCE with temperature 0.1 over the global batch.
Table 1's other SimCLR cells: experiments/ablation.py:method=simclr,...

  python -m byol_jax.main --config=experiments/simclr.py --workdir=$WORKDIR
  python -m byol_jax.main --config=experiments/simclr.py:tiny --workdir=/tmp/simclr
"""

from byol_jax import configs


def get_config(arg=None):
  config = configs.build(arg, method='simclr', epochs=300,
                         training=dict(base_learning_rate=0.3,
                                       weight_decay=1e-6))
  return config
