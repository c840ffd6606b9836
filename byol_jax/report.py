"""`python -m byol_jax.report`: runs byol_jax/results/report.py."""

import runpy

if __name__ == '__main__':
  runpy.run_module(
      'byol_jax.results.report', run_name='__main__', alter_sys=True
  )
