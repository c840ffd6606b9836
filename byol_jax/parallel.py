"""The local devices as one axis: its mesh, and the one home of jax.pmap.

Every per-device program (training step, probe step, feature extraction,
modified init) is built by `device_program`, and what feeds them is laid out
by `device_sharding`, so the prefetcher and the step agree on one mesh and a
[local_devices, ...] array reaches the program without a copy. Moving from
pmap to jit/shard_map touches this module only. Multi-host: lax.axis_index is
global (process p's devices after those of processes < p), so programs are
written once for any number of hosts.
"""

from typing import Any, Callable, Optional, Sequence, Union

import jax
import numpy as np

# The one collective axis name: the step's pmean, cross-replica BN and the
# InfoNCE all-gather are written against it.
AXIS_NAME = 'i'


def _local(devices: Optional[Sequence[jax.Device]]) -> list:
  return list(devices or jax.local_devices())


def device_mesh(
    devices: Optional[Sequence[jax.Device]] = None,
) -> jax.sharding.Mesh:
  """The local devices (default: all) as a one-axis mesh named AXIS_NAME."""
  return jax.sharding.Mesh(np.asarray(_local(devices)), (AXIS_NAME,))


def device_sharding(
    devices: Optional[Sequence[jax.Device]] = None,
) -> jax.sharding.NamedSharding:
  """The layout of a [devices, ...] array: row d on device d."""
  return jax.sharding.NamedSharding(
      device_mesh(devices), jax.sharding.PartitionSpec(AXIS_NAME)
  )


def device_program(
    fn: Callable[..., Any],
    *,
    axis_name: Optional[str] = AXIS_NAME,
    devices: Optional[Sequence[jax.Device]] = None,
    in_axes: Union[int, None, Sequence[Any]] = 0,
    donate_argnums: Union[int, Sequence[int]] = ()
) -> Callable[..., Any]:
  """`fn` run once per device on its slice of the leading axis (jax.pmap).

  in_axes per argument: 0 (split along the device axis) or None (the same on
  every device); outputs have the device axis; axis_name None for a program
  without collectives; on multi-host runs `devices` must be all local ones.
  """
  return jax.pmap(
      fn,
      axis_name=axis_name,
      devices=devices,
      in_axes=in_axes,
      donate_argnums=donate_argnums,
  )


def replicate(tree: Any, devices: Optional[Sequence[jax.Device]] = None) -> Any:
  """A pytree copied to each device: leaves [len(devices), ...]."""
  sharding = device_sharding(devices)
  n = sharding.mesh.size
  return jax.tree.map(
      lambda x: jax.device_put(
          np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding
      ),
      tree,
  )


def unreplicate(tree: Any) -> Any:
  """This process's first device's copy of a replicated pytree.

  `x[0]` of a multi-device array is a jitted gather, a program with
  collectives: on multi-process CPU runs (gloo) it waited forever while a peer
  sliced its own buffer. Slicing this process's first buffer needs none.
  """

  def first(x):
    if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
      return x.addressable_data(0)[0]
    return x[0]

  return jax.tree.map(first, tree)
