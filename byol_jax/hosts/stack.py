"""The software stack and hardware a run got, against what it requires."""

import collections
import contextlib
import importlib.metadata
import os
import pathlib
import platform
import re
from typing import Callable, Dict, Mapping, Optional

import jax

CONSTRAINTS = pathlib.Path(__file__).resolve().parents[2] / 'constraints.txt'
_PLUGINS = ('libtpu', 'jax-cuda12-plugin', 'jax-cuda12-pjrt')
STACK_PACKAGES = ('jax', 'jaxlib') + _PLUGINS
_INSTALL_HINT = (
    "pip install -c constraints.txt -e . 'jax[tpu]' (or 'jax[cuda12]'), as the "
    'launch scripts do'
)


class StackError(Exception):
  """The installed stack or JAX's backend is not what the run requires."""


def canonical(name: str) -> str:
  """A distribution name as pip compares them (PEP 503), e.g. 'dm-haiku'."""
  return re.sub(r'[-_.]+', '-', name).lower()


def read_pins(path: Optional[pathlib.Path] = None) -> Dict[str, str]:
  """{canonical name: version} of a constraints file's `name==version` lines."""
  path = pathlib.Path(path or CONSTRAINTS)
  if not path.is_file():
    raise StackError(
        f'{path} not found: install from a clone (pip install -e .), whose '
        'constraints.txt holds the pins, or pass --norequire_pinned_stack.'
    )
  pin = r'^\s*([\w.-]+)\s*==\s*([^\s;#]+)'
  pins = {canonical(n): v for n, v in re.findall(pin, path.read_text(), re.M)}
  if 'jax' not in pins or 'jaxlib' not in pins:
    raise StackError(
        f'{path} pins no jax or jaxlib (need lines like jax==0.10.2).'
    )
  return pins


def installed(
    packages=STACK_PACKAGES,
    version_fn: Callable[[str], str] = importlib.metadata.version,
) -> Dict[str, Optional[str]]:
  """{canonical name: installed version or None}, in the order of `packages`."""
  versions = dict.fromkeys(map(canonical, packages))
  for name in packages:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      versions[canonical(name)] = version_fn(name)
  return versions


def describe(versions: Mapping[str, Optional[str]]) -> str:
  """'Python <version>, <package> <version>, ...' of the installed packages."""
  got = [f'{name} {v}' for name, v in versions.items() if v is not None]
  return ', '.join([f'Python {platform.python_version()}'] + got)


def check_pinned(
    versions: Mapping[str, Optional[str]],
    pins: Mapping[str, str],
    *,
    source: str = 'constraints.txt',
) -> None:
  """StackError (one line, each package, version and pin) unless on the pins."""
  # A missing plugin is no error: a CPU host has none; check_accelerator
  # catches a GPU/TPU run without one.
  wrong = [
      f'{name} {version or "not installed"} (pinned {pins[canonical(name)]})'
      for name, version in versions.items()
      if pins.get(canonical(name), version) != version
      and (version is not None or name not in _PLUGINS)
  ]
  if wrong:
    raise StackError(
        f'not the pinned stack of {source}: {", ".join(wrong)}; install with '
        f'{_INSTALL_HINT}, or pass --norequire_pinned_stack to run on this '
        'stack anyway.'
    )


def check_accelerator(
    versions: Mapping[str, Optional[str]],
    backend: Optional[str] = None,
    env: Mapping[str, str] = os.environ,
) -> str:
  """The backend (after jax.distributed starts); StackError if 'cpu'."""
  backend = jax.default_backend() if backend is None else backend
  if backend != 'cpu':
    return backend
  no_device = {
      'libtpu': 'TPU (not a TPU VM, another process holding the chips, or a '
      'runtime version for another TPU generation)',
      'jax-cuda12-plugin': 'GPU (check nvidia-smi, the driver, and '
      f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')})",
  }
  plugin = next((p for p in no_device if versions.get(p)), None)
  why = (
      f'{plugin} {versions[plugin]} installed but no usable {no_device[plugin]}'
      if plugin
      else 'no accelerator plugin installed (jaxlib alone runs on the CPU); '
      f'install with {_INSTALL_HINT}'
  )
  raise StackError(
      '--require_accelerator: JAX found no GPU or TPU (jax.default_backend() '
      f'is cpu): {why}; or pass --norequire_accelerator to train on the CPU.'
  )


def resources(
    env: Mapping[str, str] = os.environ,
    affinity_fn: Optional[Callable[[int], set]] = None,
    cpu_count_fn: Callable[[], Optional[int]] = os.cpu_count,
    devices=None,
) -> str:
  """One line: the CPUs (after a cluster's pinning) and devices it may use."""
  affinity_fn = affinity_fn or getattr(os, 'sched_getaffinity', None)
  total = cpu_count_fn()
  usable = len(affinity_fn(0)) if affinity_fn else total
  parts = [f'CPUs {usable} usable of {total}']
  shown = r'CUDA_VISIBLE_DEVICES|SLURM_(CPUS_PER_TASK|GPUS_ON_NODE|JOB_GPUS)'
  parts += [f'{k}={env[k]}' for k in sorted(env) if re.fullmatch(shown, k)]
  devices = jax.local_devices() if devices is None else devices
  kinds = collections.Counter(
      f'{d.device_kind} ({d.platform})' for d in devices
  )
  kinds = ', '.join(f'{n} x {kind}' for kind, n in kinds.items())
  return '; '.join(parts + [f'local devices: {kinds}'])
