"""What the processes of a run do together (local on one process)."""

import hashlib
import itertools
import time

from absl import logging
import jax
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils
import numpy as np

_barrier_ids = itertools.count()


def barrier(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process reaches this barrier (no-op on one process)."""
  # Not a collective: a first gloo collective gives up on a peer 30 s late
  # (fixed in XLA); compiles differ. A ResNet-50 step compiles for minutes.
  if jax.process_count() > 1:
    jax_distributed.global_state.client.wait_at_barrier(
        f'byol_jax/{name}/{next(_barrier_ids)}', timeout_in_ms=timeout_s * 1000
    )


def compile_then_sync(fn, *args, name: str) -> None:
  """Compiles `fn` for `args`, then a barrier; call `fn` (it reuses this)."""
  # Not the .compile() executable: multi-process, it expects global shapes.
  start = time.monotonic()
  fn.lower(*args).compile()
  logging.info('Compiled %s in %.1fs.', name, time.monotonic() - start)
  barrier(f'compiled {name}')


def _allgather(x: np.ndarray) -> np.ndarray:
  """[process_count, ...] stack of every process's x (x itself on one)."""
  if jax.process_count() == 1:
    return np.asarray(x)[None]
  barrier('allgather')  # Processes arrive here after unequal work.
  return np.asarray(multihost_utils.process_allgather(np.asarray(x)))


def check_same_on_all_processes(values: np.ndarray, what: str) -> None:
  """RuntimeError on every process unless all pass equal small int arrays."""
  gathered = _allgather(values)
  if any(not np.array_equal(g, gathered[0]) for g in gathered):
    per_process = '; '.join(
        f'process {i}: {g.tolist()}' for i, g in enumerate(gathered)
    )
    raise RuntimeError(f'processes disagree on {what} ({per_process}).')


def fingerprint(tree) -> str:
  """sha256 hex of a pytree's structure, shapes, dtypes and bytes."""
  leaves, treedef = jax.tree_util.tree_flatten(jax.device_get(tree))
  h = hashlib.sha256(str(treedef).encode())
  for leaf in map(np.ascontiguousarray, leaves):
    h.update(f'{leaf.dtype}{leaf.shape}'.encode())
    h.update(leaf.tobytes())
  return h.hexdigest()


def fingerprint_words(hexdigest: str) -> np.ndarray:
  """The first 128 bits of a fingerprint as int32 [4], for an allgather."""
  return np.frombuffer(bytes.fromhex(hexdigest)[:16], np.int32).copy()
