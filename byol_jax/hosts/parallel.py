"""The local devices as one axis: its mesh, and the one home of jax.pmap."""

from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

# The step's pmean, cross-replica BN and the InfoNCE all-gather use this axis.
AXIS_NAME = 'i'


def device_mesh(devices: Optional[Sequence[jax.Device]] = None):
  """The local devices (default: all) as a one-axis mesh named AXIS_NAME."""
  return jax.sharding.Mesh(
      np.asarray(devices or jax.local_devices()), AXIS_NAME
  )


def device_sharding(devices: Optional[Sequence[jax.Device]] = None):
  """Row d of a [devices, ...] array on device d (the prefetcher's: no copy)."""
  return jax.sharding.NamedSharding(
      device_mesh(devices), jax.sharding.PartitionSpec(AXIS_NAME)
  )


def device_program(
    fn: Callable[..., Any], *, axis_name: Optional[str] = AXIS_NAME, **kwargs
) -> Callable[..., Any]:
  """jax.pmap(fn, **kwargs); axis_name None: a program without collectives."""
  return jax.pmap(fn, axis_name=axis_name, **kwargs)


def replicate(tree: Any, devices: Optional[Sequence[jax.Device]] = None) -> Any:
  """A pytree copied to each device: leaves [len(devices), ...]."""
  sharding = device_sharding(devices)
  shape = lambda x: (sharding.mesh.size,) + np.shape(x)
  put = lambda x: jax.device_put(np.broadcast_to(x, shape(x)), sharding)
  return jax.tree.map(put, tree)


def unreplicate(tree: Any) -> Any:
  """This process's first device's copy of a replicated pytree."""

  # Not x[0]: a jitted gather, whose collectives hung multi-process CPU runs.
  def first(x):
    return x.addressable_data(0)[0] if isinstance(x, jax.Array) else x[0]

  return jax.tree.map(first, tree)
