"""`python -m byol_jax.reproduce`: runs byol_jax/results/reproduce.py."""

import runpy

if __name__ == '__main__':
  runpy.run_module(
      'byol_jax.results.reproduce', run_name='__main__', alter_sys=True
  )
