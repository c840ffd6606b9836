r"""Table 1: normalisation per component, for BYOL and SimCLR.

Options (besides the common ones): encoder=, projector=, predictor=, each in
bn | ln | none (default bn), and method=byol|simclr (default byol). `ln` is
the paper's LayerNorm: normalisation over H, W and C (GroupNorm, one group).
Table 1's runs are 300-epoch ResNet-50 runs; paper_top1 is the cell's number
(byol_jax/results/paper.py), or -1 for the 12 BYOL and 2 SimCLR combinations the
paper did not run (e.g. LN encoder with a BN projector).

  python -m byol_jax.main \
      --config=experiments/ablation.py:encoder=bn,projector=none,predictor=none\
      --workdir=$WORKDIR
  python -m byol_jax.main \
      --config=experiments/ablation.py:method=simclr,encoder=ln,tiny \
      --workdir=/tmp/abl
"""

from byol_jax.config import configs
from byol_jax.config import presets
from byol_jax.config import validation
from byol_jax.results import paper


def get_config(arg=None):
  options = configs.parse_options(
      arg,
      configs.COMMON_OPTIONS + ('encoder', 'projector', 'predictor', 'method'),
  )
  norms = {}
  for component in ('encoder', 'projector', 'predictor'):
    kind = options.get(component, 'bn')
    if kind not in presets.TABLE1_NORMS:
      raise ValueError(
          f'ablation option {component}={kind!r}: use one of '
          f'{", ".join(presets.TABLE1_NORMS)} (paper Table 1).'
      )
    norms[f'{component}_norm'] = kind
  method = options.get('method', 'byol')
  if method not in validation.METHODS:
    raise ValueError(
        f'ablation option method={method!r}: use '
        f'{" or ".join(validation.METHODS)}.'
    )
  config = configs.experiment_config(
      arg, method=method, epochs=300, model=norms, options=options
  )
  top1 = paper.table1(
      method,
      norms['encoder_norm'],
      norms['projector_norm'],
      norms['predictor_norm'],
  )
  config.paper_top1 = -1.0 if top1 is None else top1
  return config
