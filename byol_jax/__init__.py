"""byol_jax: BYOL without batch statistics (Richemond et al., 2020) in JAX/Haiku.

Importing the package is cheap: it imports neither TensorFlow nor the models.
"""

__version__ = '0.1.0'
