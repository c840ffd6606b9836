"""Shared by the benchmarks: naming the machine and writing results files.

Every benchmark writes
`benchmarks/results/<benchmark>-<device slug>-<date>.json`
produced by its command (never edited by hand), so results from different
machines sit side by side and a re-run on the same day replaces its file.
"""

import datetime
import json
import os
import pathlib
import platform
import re
from typing import Optional

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / 'benchmarks' / 'results'


def cpu_name() -> str:
  """The CPU model name ('AMD EPYC ...'), or the platform's best guess."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cpu_cores() -> int:
  """CPU cores this process may run on (the affinity mask, not the machine)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def slug(text: str) -> str:
  """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (safe in file names)."""
  return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')


def device_slug(platform_name: str, device_kind: str, num_devices: int) -> str:
  """File-name slug of the devices a benchmark ran on.

  Args:
    platform_name: jax's platform ('cpu', 'gpu', 'tpu').
    device_kind: jax.Device.device_kind.
    num_devices: devices the benchmark used.

  Returns:
    e.g. 'cpu-amd-epyc-2cores-x1' or 'nvidia-h100-80gb-hbm3-x1'. On CPU the
    JAX device kind is just 'cpu', so the CPU model and core count name it.
  """
  if platform_name == 'cpu':
    name = f'cpu-{slug(cpu_name())}-{cpu_cores()}cores'
  else:
    name = slug(device_kind)
  return f'{name}-x{num_devices}'


def today() -> str:
  return datetime.date.today().isoformat()


def results_path(
    benchmark: str, device: str, date: Optional[str] = None, out_dir=RESULTS_DIR
) -> pathlib.Path:
  """<out_dir>/<benchmark>-<device>-<date>.json."""
  return pathlib.Path(out_dir) / f'{benchmark}-{device}-{date or today()}.json'


def write_json(path, result: dict) -> pathlib.Path:
  """Writes `result` as indented JSON (making the folder); returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2) + '\n')
  return path
