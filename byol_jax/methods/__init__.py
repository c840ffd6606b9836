"""The self-supervised methods; their names are defined here, once.

`config.method` names one of METHODS: BYOL (methods/byol.py) or SIMCLR
(methods/simclr.py), the contrastive baseline of the paper's Table 1.
"""

BYOL = 'byol'
SIMCLR = 'simclr'
METHODS = (BYOL, SIMCLR)
