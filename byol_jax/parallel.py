"""The local devices as one axis: its mesh, and the one home of jax.pmap.

Every program that runs once per local device (the training step, the
linear probe's step, feature extraction, the modified init's statistics) is
built by `device_program`; arrays that feed those programs are laid out by
`device_sharding` (the input prefetcher, `replicate`), so the prefetcher and
the step agree on one mesh: the local devices along the axis `AXIS_NAME`.
An array of shape [local_devices, ...] with that sharding is what a pmapped
program consumes without a copy. Moving from pmap to jit/shard_map touches
this module only.

Multi-host: the mesh holds this process's devices; a pmapped program's axis
spans every process's devices (lax.axis_index is global, process p's devices
after those of processes < p), so programs are written once for any number
of hosts.
"""

from typing import Any, Callable, Optional, Sequence, Union

import jax
import numpy as np

# The one collective axis name: the step's pmean, cross-replica BN and the
# InfoNCE all-gather are written against it.
AXIS_NAME = 'i'


def _local(devices: Optional[Sequence[jax.Device]]) -> list:
  return list(devices or jax.local_devices())


def device_mesh(devices: Optional[Sequence[jax.Device]] = None
                ) -> jax.sharding.Mesh:
  """The local devices as a one-axis mesh named AXIS_NAME.

  Args:
    devices: the devices, in the order of the leading axis of the arrays laid
      out on them (default: jax.local_devices()).

  Returns:
    A jax.sharding.Mesh of shape {AXIS_NAME: len(devices)}.
  """
  return jax.sharding.Mesh(np.asarray(_local(devices)), (AXIS_NAME,))


def device_sharding(devices: Optional[Sequence[jax.Device]] = None
                    ) -> jax.sharding.NamedSharding:
  """The layout of a [devices, ...] array: row d on device d.

  A device program (`device_program`) consumes arrays with this sharding
  without a copy.

  Args:
    devices: the devices (default: jax.local_devices()).

  Returns:
    NamedSharding over `device_mesh(devices)` splitting axis 0 along
    AXIS_NAME.
  """
  return jax.sharding.NamedSharding(device_mesh(devices),
                                    jax.sharding.PartitionSpec(AXIS_NAME))


def device_program(fn: Callable[..., Any], *,
                   axis_name: Optional[str] = AXIS_NAME,
                   devices: Optional[Sequence[jax.Device]] = None,
                   in_axes: Union[int, None, Sequence[Any]] = 0,
                   donate_argnums: Union[int, Sequence[int]] = ()
                   ) -> Callable[..., Any]:
  """`fn` run once per device on its slice of the leading axis (jax.pmap).

  Args:
    fn: the per-device program; its collectives (pmean, all_gather,
      axis_index) name `axis_name`.
    axis_name: the collective axis (AXIS_NAME), or None for a program
      without collectives.
    devices: local devices to run on (default: all local devices; on
      multi-host runs it must be all of them).
    in_axes: per argument, 0 (split along the leading device axis) or None
      (the same value on every device), as jax.pmap's.
    donate_argnums: arguments whose buffers the program may reuse for its
      outputs (the training state).

  Returns:
    The mapped function: arguments with in_axes 0 have a leading axis of
    len(devices) (or are laid out by `device_sharding`); every output has
    that leading axis.
  """
  return jax.pmap(fn, axis_name=axis_name, devices=devices, in_axes=in_axes,
                  donate_argnums=donate_argnums)


def replicate(tree: Any, devices: Optional[Sequence[jax.Device]] = None
              ) -> Any:
  """Copies a pytree onto each device (new leading axis = device).

  Args:
    tree: a pytree of arrays (host or device).
    devices: the devices (default: jax.local_devices()).

  Returns:
    The pytree with each leaf of shape [len(devices), ...] laid out by
    `device_sharding(devices)`, same dtypes.
  """
  sharding = device_sharding(devices)
  n = sharding.mesh.size
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)),
                               sharding), tree)


def unreplicate(tree: Any) -> Any:
  """This process's first device's copy of a replicated pytree.

  `x[0]` of an array on several devices is a jitted gather over them, a
  program with collectives; on multi-process CPU runs (gloo) one process's
  such program waited forever for its peers while another sliced its own
  buffer. Reading this process's first local buffer and slicing it on its
  one device needs no collective.

  Args:
    tree: a pytree whose leaves have a leading device axis.

  Returns:
    The pytree with that axis removed (leaves on this process's first local
    device).
  """
  def first(x):
    if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
      return x.addressable_data(0)[0]
    return x[0]
  return jax.tree.map(first, tree)
