"""The training step moved to experiment.py; these names stay for the callers
outside it not yet moved (tests/data/test_in_memory.py,
benchmarks/checkpoint_stall.py)."""
from byol_jax.experiment import init_train_state  # pylint: disable=unused-import
from byol_jax.experiment import pmap_update  # pylint: disable=unused-import
from byol_jax.experiment import TrainState  # pylint: disable=unused-import
