"""How this process starts jax.distributed (before touching the backend)."""

import dataclasses
import re
from typing import Any, Callable, Mapping, Optional

from absl import logging
import jax

FLAG_NAMES = ('--coordinator_address', '--num_processes', '--process_id')
ENV_NAMES = tuple(f'BYOL_{n[2:].upper()}' for n in FLAG_NAMES)
MODES = ('auto', 'off')


class DistributedConfigError(ValueError):
  """Inconsistent multi-process settings; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """How this process joins a run: source 'flags'|'env'|'slurm'|'tpu'|'none'."""

  source: str
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  local_device_ids: Optional[tuple[int, ...]] = None

  @property
  def is_multiprocess(self) -> bool:
    return self.source != 'none'

  def describe(self) -> str:
    if self.source == 'none':
      return 'single process (no jax.distributed)'
    if self.source == 'tpu':
      return 'Cloud TPU VM: jax.distributed.initialize() reads the metadata'
    ids = self.local_device_ids
    return (
        f'process {self.process_id} of {self.num_processes}, coordinator '
        f'{self.coordinator_address}, local devices '
        f'{"all" if ids is None else list(ids)} (from {self.source})'
    )


def _int(value, name: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise DistributedConfigError(
        f'{name}={value!r} must be an integer.'
    ) from None


def _plan(source, values, names, local=None) -> Optional[Plan]:
  """A checked Plan of (address, count, index); None if none is set."""
  given = [v not in (None, '') for v in values]
  if not any(given):
    return None
  if not all(given):
    have = ', '.join(n for n, g in zip(names, given) if g)
    missing = ', '.join(n for n, g in zip(names, given) if not g)
    raise DistributedConfigError(
        f'{have} set but {missing} not: set all of them, or none (to detect '
        'SLURM or a Cloud TPU VM).'
    )
  address, count, index = values
  host, _, port = str(address).rpartition(':')
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedConfigError(
        f'{names[0]}={address!r} must be host:port (e.g. 10.0.0.1:1234), the '
        'address of process 0 and a free port on it.'
    )
  count, index = _int(count, names[1]), _int(index, names[2])
  if count < 1:
    raise DistributedConfigError(f'{names[1]}={count} must be >= 1.')
  if not 0 <= index < count:
    raise DistributedConfigError(
        f'{names[2]}={index} is out of range for {names[1]}={count}; use '
        f'0..{count - 1}, a different one on each process.'
    )
  return Plan(source, address, count, index, local)


def first_slurm_host(nodelist: str) -> str:
  """'node[003-005,009],gpu2' -> 'node003'; an error for an empty list."""
  prefix, ranges = re.match(r'([^,\[]*)(?:\[([^\]]*)\])?', nodelist).groups()
  if not prefix and not ranges:
    raise DistributedConfigError(f'SLURM node list {nodelist!r} is empty.')
  return prefix + (re.split(r'[,-]', ranges)[0] if ranges else '')


def _tasks_on_node(env: Mapping[str, str]) -> int:
  """Tasks SLURM runs on this node ('2(x3),1'-style counts)."""
  spec = env.get('SLURM_STEP_TASKS_PER_NODE') or env.get('SLURM_TASKS_PER_NODE')
  counts = []
  for part in (spec or '1').split(','):
    m = re.fullmatch(r'(\d+)(?:\(x(\d+)\))?', part.strip())
    if not m:
      return 1
    counts += [int(m.group(1))] * int(m.group(2) or 1)
  node = _int(env.get('SLURM_NODEID', 0), 'SLURM_NODEID')
  return counts[min(node, len(counts) - 1)]


def _slurm(env: Mapping[str, str]) -> Optional[Plan]:
  """None outside SLURM or with one task."""
  nodelist = env.get('SLURM_STEP_NODELIST') or env.get('SLURM_JOB_NODELIST')
  names = ['JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'SLURM_PROCID']
  if not nodelist or not all(n in env for n in names[1:] + ['SLURM_JOB_ID']):
    return None
  if _int(env['SLURM_NTASKS'], 'SLURM_NTASKS') <= 1:
    return None
  address = env.get(names[0])
  if not address:
    # JAX's own port for the job (jax._src.clusters.slurm_cluster): the job id
    # folded into the top 4096 ports, so every task computes the same.
    job = _int(env['SLURM_JOB_ID'], 'SLURM_JOB_ID')
    port = env.get('BYOL_COORDINATOR_PORT') or 65536 - 4096 + job % 4096
    address = f'{first_slurm_host(nodelist)}:{port}'
    names[0] = 'BYOL_COORDINATOR_PORT'
  # One task per node sees all its GPUs; several get one GPU each, by local
  # rank. (JAX's own SLURM detection restricts every task to one GPU.)
  local = None
  if _tasks_on_node(env) > 1:
    local = (_int(env.get('SLURM_LOCALID', 0), 'SLURM_LOCALID'),)
  values = (address, env['SLURM_NTASKS'], env['SLURM_PROCID'])
  return _plan('slurm', values, names, local)


def process_plan(
    *,
    mode: str = 'auto',
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    env: Mapping[str, str],
    on_cloud_tpu: bool = False,
) -> Plan:
  """The first of: all three flags, BYOL_* variables, SLURM, TPU VM, none."""
  flags = _plan(
      'flags', (coordinator_address, num_processes, process_id), FLAG_NAMES
  )
  if mode == 'off':
    if flags:
      raise DistributedConfigError(
          '--distributed=off contradicts --coordinator_address/'
          '--num_processes/--process_id; drop one or the other.'
      )
    return Plan('none')
  plan = (
      flags
      or _plan('env', [env.get(n) for n in ENV_NAMES], ENV_NAMES)
      or _slurm(env)
      or (on_cloud_tpu and Plan('tpu'))
  )
  if plan:
    return plan
  if env.get('JAX_COORDINATOR_ADDRESS'):
    raise DistributedConfigError(
        f'JAX_COORDINATOR_ADDRESS={env["JAX_COORDINATOR_ADDRESS"]} is set but '
        'nothing gives the process count and id (no SLURM job, not a Cloud '
        'TPU VM): set BYOL_NUM_PROCESSES and BYOL_PROCESS_ID too, or unset it.'
    )
  return Plan('none')


def on_cloud_tpu_vm() -> bool:
  """Whether JAX found TPU chips and libtpu on this VM."""
  try:
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return bool(getattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', False))


def initialize(
    the_plan: Plan,
    *,
    initialize_fn: Callable[..., None] = jax.distributed.initialize,
    config_update: Callable[[str, Any], None] = jax.config.update,
) -> bool:
  """Starts jax.distributed unless single-process; True if started."""
  logging.info('Distributed: %s.', the_plan.describe())
  if not the_plan.is_multiprocess:
    return False
  # A multi-process CPU pmap needs gloo (older jax defaults to none); GPU and
  # TPU ignore it.
  config_update('jax_cpu_collectives_implementation', 'gloo')
  # The plan's values, not JAX's detection (a SLURM task: one GPU); none on a
  # Cloud TPU VM (JAX reads the metadata).
  kwargs, ids = {}, the_plan.local_device_ids
  if the_plan.source != 'tpu':
    kwargs = dict(
        coordinator_address=the_plan.coordinator_address,
        num_processes=the_plan.num_processes,
        process_id=the_plan.process_id,
        local_device_ids=None if ids is None else list(ids),
        cluster_detection_method='deactivate',
    )
  initialize_fn(**kwargs)
  return True
