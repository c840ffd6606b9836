"""The software stack and hardware a run actually got.

`constraints.txt` (repository root) pins the tested stack: CI and the launch
scripts install with it. What decides the XLA a run compiles with is jax,
jaxlib and the backend's plugin (libtpu on TPU VMs, jax-cuda12-plugin and
jax-cuda12-pjrt on GPUs): `installed` reads their versions, `check_pinned`
compares them with the pins (main's --require_pinned_stack), and
`check_accelerator` stops a run that was meant for a GPU or TPU but got JAX's
CPU backend (main's --require_accelerator: a jaxlib without CUDA, or a driver
JAX cannot use, otherwise only logs a warning and trains on the CPU).
`resources` says which CPUs and GPUs the process may use (what a cluster's
CPU pinning or CUDA_VISIBLE_DEVICES left it).

Nothing here reads flags; main.py decides which checks apply.
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
STACK_PACKAGES = ('jax', 'jaxlib', 'libtpu', 'jax-cuda12-plugin',
                  'jax-cuda12-pjrt')
_PLUGINS = ('libtpu', 'jax-cuda12-plugin', 'jax-cuda12-pjrt')

_INSTALL_HINT = ("pip install -c constraints.txt -e . 'jax[tpu]' (or "
                 "'jax[cuda12]'), as the launch scripts do")


class StackError(Exception):
  """The installed stack or JAX's backend is not what the run requires."""


def canonical(name: str) -> str:
  """A distribution name as pip compares them (PEP 503).

  Args:
    name: a distribution name, e.g. 'dm_haiku' or 'Tensorflow-CPU'.

  Returns:
    The name in lower case with each run of '-', '_' and '.' replaced by one
    '-', e.g. 'dm-haiku'.
  """
  return re.sub(r'[-_.]+', '-', name).lower()


def read_pins(path: Optional[pathlib.Path] = None) -> Dict[str, str]:
  """The `name==version` pins of a pip constraints file.

  Args:
    path: the constraints file (default: the checkout's constraints.txt).

  Returns:
    {canonical distribution name: pinned version}; lines that are not exact
    pins (comments, ranges) are skipped.

  Raises:
    StackError: the file does not exist (byol_jax installed without its
      checkout) or pins neither jax nor jaxlib.
  """
  path = pathlib.Path(path or CONSTRAINTS)
  if not path.is_file():
    raise StackError(f'{path} not found: the pins live in the checkout\'s '
                     'constraints.txt (install with pip install -e . from a '
                     'clone), or pass --norequire_pinned_stack.')
  pins = {}
  for line in path.read_text().splitlines():
    match = re.match(r'^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)',
                     line)
    if match:
      pins[canonical(match.group(1))] = match.group(2)
  if 'jax' not in pins or 'jaxlib' not in pins:
    raise StackError(f'{path} pins no jax or jaxlib version (lines like '
                     'jax==0.10.2 expected).')
  return pins


def installed(packages=STACK_PACKAGES,
              version_fn: Callable[[str], str] = importlib.metadata.version
              ) -> Dict[str, Optional[str]]:
  """The installed version of each package, None when it is not installed.

  Args:
    packages: distribution names.
    version_fn: importlib.metadata.version (injectable for tests).

  Returns:
    {canonical name: version or None}, in the order of `packages`.
  """
  versions = {}
  for name in packages:
    try:
      versions[canonical(name)] = version_fn(name)
    except importlib.metadata.PackageNotFoundError:
      versions[canonical(name)] = None
  return versions


def describe(versions: Mapping[str, Optional[str]]) -> str:
  """One line for the log: Python and the installed stack packages.

  Args:
    versions: {distribution name: version or None}, as from `installed`.

  Returns:
    'Python <version>, <package> <version>, ...' in the order of
    `versions`; packages that are not installed (None) are left out.
  """
  got = [f'{name} {version}' for name, version in versions.items()
         if version is not None]
  return ', '.join([f'Python {platform.python_version()}'] + got)


def check_pinned(versions: Mapping[str, Optional[str]],
                 pins: Mapping[str, str], *, source: str = 'constraints.txt'
                 ) -> None:
  """Refuses a stack whose installed packages differ from the pins.

  jax and jaxlib must be installed at their pins; a plugin (libtpu,
  jax-cuda12-*) is compared when it is installed (a CPU host has none; a TPU
  or GPU run without its plugin gets the CPU backend, which
  check_accelerator catches).

  Args:
    versions: installed(), {canonical name: version or None}.
    pins: read_pins().
    source: the pins' file name, for the message.

  Raises:
    StackError: one line naming each package, its installed version and its
      pin.
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
    raise StackError(f'not the pinned stack of {source}: {", ".join(wrong)}; '
                     f'install with {_INSTALL_HINT}, or pass '
                     '--norequire_pinned_stack to run on this stack anyway.')


def check_accelerator(versions: Mapping[str, Optional[str]],
                      backend: Optional[str] = None,
                      env: Mapping[str, str] = os.environ) -> str:
  """Refuses JAX's CPU backend for a run that requires a GPU or TPU.

  Call it after jax.distributed is initialised (it starts the backend).

  Args:
    versions: installed(), for the message.
    backend: jax.default_backend() (default: asked here).
    env: the environment, for CUDA_VISIBLE_DEVICES in the message.

  Returns:
    The backend ('gpu', 'tpu', ...).

  Raises:
    StackError: the backend is 'cpu'; one line saying why that may be and
      how to fix it or run anyway.
  """
  if backend is None:
    import jax  # pylint: disable=g-import-not-at-top
    backend = jax.default_backend()
  if backend != 'cpu':
    return backend
  if versions.get('libtpu'):
    why = (f'libtpu {versions["libtpu"]} installed but no usable TPU (not a '
           'TPU VM, another process holding the chips, or a runtime version '
           'for another TPU generation)')
  elif versions.get('jax-cuda12-plugin'):
    why = (f'jax-cuda12-plugin {versions["jax-cuda12-plugin"]} installed but '
           'no usable GPU (check nvidia-smi, the driver, and '
           f'CUDA_VISIBLE_DEVICES={env.get("CUDA_VISIBLE_DEVICES", "<unset>")})')
  else:
    why = ('no accelerator plugin installed (jaxlib alone runs on the CPU); '
           f'install with {_INSTALL_HINT}')
  raise StackError(f'--require_accelerator: JAX found no GPU or TPU '
                   f'(jax.default_backend() is cpu): {why}; or pass '
                   '--norequire_accelerator to train on the CPU.')


def resources(env: Mapping[str, str] = os.environ,
              affinity_fn: Optional[Callable[[int], set]] = None,
              cpu_count_fn: Callable[[], Optional[int]] = os.cpu_count,
              devices=None) -> str:
  """One line: the CPUs and accelerators this process may use.

  Args:
    env: the environment (CUDA_VISIBLE_DEVICES, SLURM's CPU and GPU counts).
    affinity_fn: os.sched_getaffinity (injectable; absent on macOS).
    cpu_count_fn: os.cpu_count.
    devices: jax.local_devices() (default: asked here).

  Returns:
    e.g. 'CPUs 32 usable of 128; CUDA_VISIBLE_DEVICES=0,1; SLURM_CPUS_PER_TASK=32;
    local devices: 2 x NVIDIA H100 (gpu)'.
  """
  affinity_fn = affinity_fn or getattr(os, 'sched_getaffinity', None)
  total = cpu_count_fn()
  usable = len(affinity_fn(0)) if affinity_fn else total
  parts = [f'CPUs {usable} usable of {total}']
  for name in ('CUDA_VISIBLE_DEVICES', 'SLURM_CPUS_PER_TASK',
               'SLURM_GPUS_ON_NODE', 'SLURM_JOB_GPUS'):
    if name in env:
      parts.append(f'{name}={env[name]}')
  if devices is None:
    import jax  # pylint: disable=g-import-not-at-top
    devices = jax.local_devices()
  kinds = {}
  for device in devices:
    key = f'{device.device_kind} ({device.platform})'
    kinds[key] = kinds.get(key, 0) + 1
  parts.append('local devices: ' + ', '.join(
      f'{count} x {kind}' for kind, count in kinds.items()))
  return '; '.join(parts)
