r"""BN-free BYOL with the data-dependent "modified initialisation" (paper §3.2).

Paper Table 2, "modified init": 65.7% ImageNet top-1. BN is replaced by
trainable per-channel affine layers initialised from the statistics of one
BN forward pass on a batch of augmented images (byol_jax/modified_init.py),
and the learning rate warms up for 50 epochs instead of 10 (paper §3.2).
Our reading of "BN-free": every component (encoder, projector, predictor) is
calibrated, so no layer computes batch statistics.

  python -m byol_jax.main --config=experiments/modified_init.py \
      --workdir=$WORKDIR
  python -m byol_jax.main --config=experiments/modified_init.py:tiny \
      --workdir=/tmp/mi
"""

from byol_jax.config import configs
from byol_jax.results import paper


def get_config(arg=None):
  config = configs.experiment_config(
      arg,
      epochs=1000,
      # gamma0 = 0 for the last norm of each residual block (paper §3.2).
      model=dict(
          encoder_norm='affine',
          projector_norm='affine',
          predictor_norm='affine',
          zero_init_last=True,
      ),
      training=dict(modified_init=True, warmup_epochs=50),
  )  # paper §3.2
  config.paper_top1 = paper.TABLE2['modified_init']
  return config
