"""The device layout (byol_jax/hosts/parallel.py): one mesh, one pmap home."""

import ast
import pathlib

import jax
import numpy as np

from byol_jax.data import pipeline
from byol_jax.hosts import parallel

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / 'byol_jax'


def _uses_pmap(tree: ast.AST) -> bool:
  """`jax.pmap` in code (not in docstrings or comments), or pmap imported."""
  for node in ast.walk(tree):
    if (
        isinstance(node, ast.Attribute)
        and node.attr == 'pmap'
        and isinstance(node.value, ast.Name)
        and node.value.id == 'jax'
    ):
      return True
    if (
        isinstance(node, ast.ImportFrom)
        and node.module == 'jax'
        and any(a.name == 'pmap' for a in node.names)
    ):
      return True
  return False


def test_jax_pmap_appears_in_exactly_one_module():
  users = sorted(
      str(p.relative_to(PACKAGE.parent))
      for p in PACKAGE.rglob('*.py')
      if _uses_pmap(ast.parse(p.read_text(), filename=str(p)))
  )
  assert users == ['byol_jax/hosts/parallel.py'], users


def test_prefetcher_and_step_share_one_layout():
  devices = jax.local_devices()
  batch = {
      'x': np.arange(len(devices) * 6, dtype=np.float32).reshape(
          len(devices), 2, 3
      )
  }
  (prefetched,) = list(pipeline.prefetch_to_device(iter([batch])))
  replicated = parallel.replicate(np.float32(2.0))
  for x in (prefetched['x'], replicated):
    assert x.sharding == parallel.device_sharding(devices)
    assert [s.device for s in x.addressable_shards] == devices
  step = parallel.device_program(
      lambda x, c: jax.lax.psum(x.sum(), parallel.AXIS_NAME) * c
  )
  out = step(prefetched['x'], replicated)
  np.testing.assert_array_equal(
      np.asarray(out), np.full(len(devices), 2.0 * batch['x'].sum())
  )
  np.testing.assert_array_equal(
      parallel.unreplicate(out), 2.0 * batch['x'].sum()
  )
