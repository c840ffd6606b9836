"""BYOL without batch statistics (Richemond et al., 2020) in JAX/Haiku.

Importing the package is cheap: it imports neither TensorFlow nor the models.
"""

__version__ = '0.1.0'


def __getattr__(name):
  # `byol_jax.load_encoder(workdir)` without importing jax at package import.
  if name == 'load_encoder':
    from byol_jax.encoder import load_encoder  # pylint: disable=g-import-not-at-top

    return load_encoder
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
