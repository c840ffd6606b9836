"""The software stack and hardware a run got, against what it requires.

What decides the XLA a run compiles with is jax, jaxlib and the backend's
plugin (libtpu, jax-cuda12-*), pinned in constraints.txt. main.py decides
which checks apply (--require_pinned_stack, --require_accelerator): without
the latter, a jaxlib without CUDA or an unusable driver only logs a warning
and trains on the CPU.
"""

import importlib.metadata
import os
import pathlib
import platform
import re
from typing import Callable, Dict, Mapping, Optional

# The pins: next to the package in a checkout (`pip install -e .`).
CONSTRAINTS = pathlib.Path(__file__).resolve().parents[1] / 'constraints.txt'

# The distributions that make up JAX's compiler and runtime, in log order.
STACK_PACKAGES = (
    'jax',
    'jaxlib',
    'libtpu',
    'jax-cuda12-plugin',
    'jax-cuda12-pjrt',
)
_PLUGINS = ('libtpu', 'jax-cuda12-plugin', 'jax-cuda12-pjrt')

_INSTALL_HINT = (
    "pip install -c constraints.txt -e . 'jax[tpu]' (or "
    "'jax[cuda12]'), as the launch scripts do"
)


class StackError(Exception):
  """The installed stack or JAX's backend is not what the run requires."""


def canonical(name: str) -> str:
  """A distribution name as pip compares them (PEP 503), e.g. 'dm-haiku'."""
  return re.sub(r'[-_.]+', '-', name).lower()


def read_pins(path: Optional[pathlib.Path] = None) -> Dict[str, str]:
  """{canonical name: version} of a constraints file's `name==version` pins.

  StackError when the file is missing (installed without its checkout) or pins
  no jax or jaxlib.
  """
  path = pathlib.Path(path or CONSTRAINTS)
  if not path.is_file():
    raise StackError(
        f"{path} not found: the pins live in the checkout's "
        'constraints.txt (install with pip install -e . from a '
        'clone), or pass --norequire_pinned_stack.'
    )
  pins = {}
  for line in path.read_text().splitlines():
    match = re.match(
        r'^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)', line
    )
    if match:
      pins[canonical(match.group(1))] = match.group(2)
  if 'jax' not in pins or 'jaxlib' not in pins:
    raise StackError(
        f'{path} pins no jax or jaxlib version (lines like '
        'jax==0.10.2 expected).'
    )
  return pins


def installed(
    packages=STACK_PACKAGES,
    version_fn: Callable[[str], str] = importlib.metadata.version,
) -> Dict[str, Optional[str]]:
  """{canonical name: installed version or None}, in the order of `packages`."""
  versions = {}
  for name in packages:
    try:
      versions[canonical(name)] = version_fn(name)
    except importlib.metadata.PackageNotFoundError:
      versions[canonical(name)] = None
  return versions


def describe(versions: Mapping[str, Optional[str]]) -> str:
  """'Python <version>, <package> <version>, ...' of the installed packages."""
  got = [
      f'{name} {version}'
      for name, version in versions.items()
      if version is not None
  ]
  return ', '.join([f'Python {platform.python_version()}'] + got)


def check_pinned(
    versions: Mapping[str, Optional[str]],
    pins: Mapping[str, str],
    *,
    source: str = 'constraints.txt',
) -> None:
  """StackError (one line, each package, version and pin) unless on the pins.

  jax and jaxlib must match; a plugin only when installed (a CPU host has none;
  a GPU/TPU run without its plugin gets the CPU, which check_accelerator
  catches).
  """
  wrong = []
  for name, version in versions.items():
    pin = pins.get(canonical(name))
    if pin is None or version == pin:
      continue
    if version is None and name in _PLUGINS:
      continue
    wrong.append(f'{name} {version or "not installed"} (pinned {pin})')
  if wrong:
    raise StackError(
        f'not the pinned stack of {source}: {", ".join(wrong)}; '
        f'install with {_INSTALL_HINT}, or pass '
        '--norequire_pinned_stack to run on this stack anyway.'
    )


def check_accelerator(
    versions: Mapping[str, Optional[str]],
    backend: Optional[str] = None,
    env: Mapping[str, str] = os.environ,
) -> str:
  """The backend; a one-line StackError saying why and how to fix it if 'cpu'.

  Call after jax.distributed is initialised (it starts the backend).
  """
  if backend is None:
    import jax  # pylint: disable=g-import-not-at-top

    backend = jax.default_backend()
  if backend != 'cpu':
    return backend
  if versions.get('libtpu'):
    why = (
        f'libtpu {versions["libtpu"]} installed but no usable TPU (not a '
        'TPU VM, another process holding the chips, or a runtime version '
        'for another TPU generation)'
    )
  elif versions.get('jax-cuda12-plugin'):
    why = (
        f'jax-cuda12-plugin {versions["jax-cuda12-plugin"]} installed but '
        'no usable GPU (check nvidia-smi, the driver, and '
        f'CUDA_VISIBLE_DEVICES={env.get("CUDA_VISIBLE_DEVICES", "<unset>")})'
    )
  else:
    why = (
        'no accelerator plugin installed (jaxlib alone runs on the CPU); '
        f'install with {_INSTALL_HINT}'
    )
  raise StackError(
      f'--require_accelerator: JAX found no GPU or TPU '
      f'(jax.default_backend() is cpu): {why}; or pass '
      '--norequire_accelerator to train on the CPU.'
  )


def resources(
    env: Mapping[str, str] = os.environ,
    affinity_fn: Optional[Callable[[int], set]] = None,
    cpu_count_fn: Callable[[], Optional[int]] = os.cpu_count,
    devices=None,
) -> str:
  """One line: the CPUs and accelerators this process may use.

  E.g. 'CPUs 32 usable of 128; CUDA_VISIBLE_DEVICES=0,1; local devices: 2 x
  NVIDIA H100 (gpu)' (what a cluster's pinning left it).
  """
  affinity_fn = affinity_fn or getattr(os, 'sched_getaffinity', None)
  total = cpu_count_fn()
  usable = len(affinity_fn(0)) if affinity_fn else total
  parts = [f'CPUs {usable} usable of {total}']
  for name in (
      'CUDA_VISIBLE_DEVICES',
      'SLURM_CPUS_PER_TASK',
      'SLURM_GPUS_ON_NODE',
      'SLURM_JOB_GPUS',
  ):
    if name in env:
      parts.append(f'{name}={env[name]}')
  if devices is None:
    import jax  # pylint: disable=g-import-not-at-top

    devices = jax.local_devices()
  kinds = {}
  for device in devices:
    key = f'{device.device_kind} ({device.platform})'
    kinds[key] = kinds.get(key, 0) + 1
  parts.append(
      'local devices: '
      + ', '.join(f'{count} x {kind}' for kind, count in kinds.items())
  )
  return '; '.join(parts)
