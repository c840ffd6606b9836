"""Crop-box sampling: the configurable minimum area (data.min_crop_area)."""

import numpy as np
import pytest

from byol_jax.data import crops


@pytest.mark.parametrize('min_area', [0.08, 0.5])
def test_min_crop_area_bounds_the_crop(min_area):
  u = np.random.RandomState(0).uniform(size=(4000, crops.NUM_U))
  y0, x0, ch, cw = crops.sample_crop(np, u, 100, 120, min_area)
  frac = ch * cw / (100. * 120.)
  assert np.all((y0 >= 0) & (x0 >= 0) & (y0 + ch <= 100) & (x0 + cw <= 120))
  # Rounding of the sides may shave a little off the smallest areas.
  assert frac.min() >= 0.95 * min_area
  assert frac.min() < min_area + 0.05  # the lower end is really reached.
  if min_area == 0.5:
    default = crops.sample_crop(np, u, 100, 120)
    assert (default[2] * default[3]).mean() < (ch * cw).mean()
