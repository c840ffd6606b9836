"""The self-supervised methods' names, once: BYOL and the SimCLR baseline."""

BYOL = 'byol'
SIMCLR = 'simclr'
METHODS = (BYOL, SIMCLR)
