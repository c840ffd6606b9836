"""Agreement between the processes of a multi-process run, once started.

distributed.py decides how jax.distributed starts; this module holds what the
running processes do together: `barrier` (jax.distributed's coordination
service, not a device collective), `compile_then_sync` (compile, then a
barrier, so compile-time skew never reaches a collective), the small
cross-host agreements the training loop needs (`any_process`,
`check_same_on_all_processes`), and a state `fingerprint` for comparing
states bit for bit across hosts and runs. On one process every function is
local and communicates nothing.
"""

import hashlib
import itertools
import time

from absl import logging
import jax
import numpy as np

# Compiling a ResNet-50 step can take minutes on a loaded host.
BARRIER_TIMEOUT_S = 1800
_barrier_ids = itertools.count()


def barrier(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
  """Waits until every process reaches this barrier (no-op on one process).

  Uses the coordination service of jax.distributed, not a device collective:
  on CPU hosts the first cross-process collective of each program sets up a
  gloo context and gives up when a peer is more than 30 s late (a fixed
  timeout in XLA), and compile times differ between processes (one may load
  the program from the persistent compilation cache while another compiles
  it). A barrier after compiling and before running absorbs that skew.

  Args:
    name: what is being waited for (for the id and errors).
    timeout_s: how long to wait for the slowest process.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  client = jax_distributed.global_state.client
  barrier_id = f'byol_jax/{name}/{next(_barrier_ids)}'
  if client is None:  # Multi-process without jax.distributed.initialize.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(barrier_id)
    return
  client.wait_at_barrier(barrier_id, timeout_in_ms=timeout_s * 1000)


def compile_then_sync(fn, *args, name: str) -> None:
  """Compiles fn (jit/pmap-ed) for args without running it, then a barrier.

  Call `fn` itself afterwards: JAX keeps the executable compiled here in its
  in-memory cache and the next call with arguments like `args` reuses it
  (jax_log_compiles shows one compilation). The
  executable returned by `.compile()` cannot be called directly on several
  processes: a multi-process pmap lowers for the global shape [all devices,
  ...] while each process passes its local [local devices, ...] arrays.

  Args:
    fn: a jax.pmap / jax.jit function.
    *args: example arguments (shapes, dtypes and shardings are what count).
    name: what fn is, for the log and the barrier.
  """
  start = time.monotonic()
  fn.lower(*args).compile()
  logging.info('Compiled %s in %.1fs.', name, time.monotonic() - start)
  barrier(f'compiled {name}')


def _allgather(x: np.ndarray) -> np.ndarray:
  """[process_count, ...] stack of every process's x (x itself on one)."""
  if jax.process_count() == 1:
    return np.asarray(x)[None]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  barrier('allgather')  # Processes arrive here after unequal work.
  return np.asarray(multihost_utils.process_allgather(np.asarray(x)))


def any_process(flag: bool) -> bool:
  """Whether `flag` is True on at least one process.

  A collective: every process must call it at the same point.

  Args:
    flag: this process's value.

  Returns:
    The same bool on every process: the OR over processes (`flag` itself on
    one process).
  """
  return bool(_allgather(np.asarray(bool(flag), np.int32)).max())


def check_same_on_all_processes(values: np.ndarray, what: str) -> None:
  """Checks that every process holds equal `values`.

  A collective: every process must call it at the same point.

  Args:
    values: a small int array (a step, a fingerprint's words), the same
      shape and dtype on every process.
    what: what the values are, for the message.

  Raises:
    RuntimeError: (on every process) the values differ; the message lists
      each process's values.
  """
  values = np.asarray(values)
  gathered = _allgather(values)
  if not all(np.array_equal(g, gathered[0]) for g in gathered):
    per_process = '; '.join(f'process {i}: {g.tolist()}'
                            for i, g in enumerate(gathered))
    raise RuntimeError(f'processes disagree on {what} ({per_process}).')


def fingerprint(tree) -> str:
  """sha256 (hex) of a pytree's structure, shapes, dtypes and bytes.

  Equal fingerprints mean bit-identical trees: used to check that every host
  holds the same TrainState, and by tests to compare runs.

  Args:
    tree: a pytree of arrays (jax arrays are fetched to the host; a
      multi-process global array must be fully addressable).

  Returns:
    The 64-character hex digest.
  """
  h = hashlib.sha256()
  leaves, treedef = jax.tree_util.tree_flatten(jax.device_get(tree))
  h.update(str(treedef).encode())
  for leaf in leaves:
    leaf = np.ascontiguousarray(np.asarray(leaf))
    h.update(f'{leaf.dtype}{leaf.shape}'.encode())
    h.update(leaf.tobytes())
  return h.hexdigest()


def fingerprint_words(hexdigest: str) -> np.ndarray:
  """The first 128 bits of a fingerprint, for an allgather.

  Args:
    hexdigest: a `fingerprint` (at least 32 hex characters).

  Returns:
    int32 [4] array (native byte order).
  """
  return np.frombuffer(bytes.fromhex(hexdigest)[:16], np.int32).copy()
