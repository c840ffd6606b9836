"""byol_jax/hosts/stack.py and the pins: constraints.txt, the version and
accelerator checks, main's --require_pinned_stack / --require_accelerator."""

import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
import types

from packaging import requirements
import pytest

from byol_jax.hosts import stack

REPO = pathlib.Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / 'experiments'
TESTED = {
    'jax': '0.10.2',
    'jaxlib': '0.10.2',
    'dm-haiku': '0.0.17',
    'optax': '0.2.8',
    'tensorflow-cpu': '2.21.0',
    'tensorflow-datasets': '4.9.10',
    'orbax-checkpoint': '0.12.8',
}


# ------------------------------------------------------------ constraints.txt
def test_constraints_pin_the_tested_stack_and_every_requirement():
  pins = stack.read_pins()
  for name, version in TESTED.items():
    assert pins[name] == version, name
  # The TPU and GPU plugins of that jax, and the tensorboard README names.
  assert pins['libtpu'].startswith('0.0.42')
  assert pins['jax-cuda12-plugin'] == pins['jax-cuda12-pjrt'] == pins['jax']
  assert 'tensorboard' in pins and 'uv' in pins
  # Every requirement (and test extra) is pinned, inside its range.
  lines = (REPO / 'requirements.txt').read_text().splitlines()
  wanted = [l for l in lines if l.strip() and not l.startswith('#')]
  wanted += ['pytest>=7', 'pytest-xdist>=3']
  for line in wanted:
    req = requirements.Requirement(line)
    pin = pins.get(stack.canonical(req.name))
    assert pin is not None, f'{req.name} is not pinned in constraints.txt'
    assert req.specifier.contains(pin), f'{req.name}=={pin} outside {req}'


def test_setup_ci_and_readme_agree_on_python_and_constraints():
  assert "python_requires='>=3.11'" in (REPO / 'setup.py').read_text()
  ci = (REPO / '.ci' / 'run').read_text()
  assert "pip install -q -c constraints.txt -e '.[test]'" in ci
  readme = (REPO / 'README.md').read_text()
  assert 'Python 3.11' in readme and '3.10+' not in readme
  assert 'constraints.txt' in readme


def test_read_pins_skips_ranges_and_names_a_missing_file(tmp_path):
  path = tmp_path / 'c.txt'
  path.write_text(
      '# a comment\nJAX==0.4.35\njax_lib>=1\njaxlib == 0.4.35  '
      '# pinned\nlibtpu==0.0.5 ; python_version >= "3.11"\n'
  )
  assert stack.read_pins(path) == {
      'jax': '0.4.35',
      'jaxlib': '0.4.35',
      'libtpu': '0.0.5',
  }
  with pytest.raises(stack.StackError, match='nope.txt not found'):
    stack.read_pins(tmp_path / 'nope.txt')
  path.write_text('numpy==2.0\n')
  with pytest.raises(stack.StackError, match='pins no jax'):
    stack.read_pins(path)


# ----------------------------------------------------------- version checks
PINS = {
    'jax': '0.10.2',
    'jaxlib': '0.10.2',
    'libtpu': '0.0.42.1',
    'jax-cuda12-plugin': '0.10.2',
    'jax-cuda12-pjrt': '0.10.2',
}


def _versions(**got):
  versions = dict.fromkeys(stack.STACK_PACKAGES)
  versions.update({k.replace('_', '-'): v for k, v in got.items()})
  return versions


def test_installed_reads_metadata_and_marks_missing_packages():
  def version_fn(name):
    if name == 'libtpu':
      raise importlib.metadata.PackageNotFoundError(name)
    return {'jax': '0.6.2', 'jaxlib': '0.6.2'}.get(name, '1.0')

  got = stack.installed(
      ('jax', 'jaxlib', 'libtpu', 'jax_cuda12_plugin'), version_fn=version_fn
  )
  assert got == {
      'jax': '0.6.2',
      'jaxlib': '0.6.2',
      'libtpu': None,
      'jax-cuda12-plugin': '1.0',
  }
  line = stack.describe(got)
  assert re.fullmatch(
      r'Python 3\.\d+\.\d+\S*, jax 0\.6\.2, jaxlib 0\.6\.2, '
      r'jax-cuda12-plugin 1\.0',
      line,
  ), line


def test_pinned_stack_passes_on_cpu_tpu_and_gpu_hosts():
  stack.check_pinned(_versions(jax='0.10.2', jaxlib='0.10.2'), PINS)
  stack.check_pinned(
      _versions(jax='0.10.2', jaxlib='0.10.2', libtpu='0.0.42.1'), PINS
  )
  stack.check_pinned(
      _versions(
          jax='0.10.2',
          jaxlib='0.10.2',
          jax_cuda12_plugin='0.10.2',
          jax_cuda12_pjrt='0.10.2',
      ),
      PINS,
  )


def test_unpinned_stack_is_refused_in_one_line_naming_both_versions():
  # What pip resolves for jax[tpu] on a TPU VM's Python 3.10.
  with pytest.raises(stack.StackError) as e:
    stack.check_pinned(
        _versions(jax='0.6.2', jaxlib='0.6.2', libtpu='0.0.17'), PINS
    )
  message = str(e.value)
  assert '\n' not in message
  assert (
      'jax 0.6.2 (pinned 0.10.2), jaxlib 0.6.2 (pinned 0.10.2), '
      'libtpu 0.0.17 (pinned 0.0.42.1)'
  ) in message
  assert '--norequire_pinned_stack' in message
  with pytest.raises(
      stack.StackError,
      match=r'jax-cuda12-pjrt 0\.10\.1 ' r'\(pinned 0\.10\.2\)',
  ):
    stack.check_pinned(
        _versions(
            jax='0.10.2',
            jaxlib='0.10.2',
            jax_cuda12_plugin='0.10.2',
            jax_cuda12_pjrt='0.10.1',
        ),
        PINS,
    )


def test_accelerator_check():
  cpu_only = _versions(jax='0.10.2', jaxlib='0.10.2')
  assert stack.check_accelerator(cpu_only, backend='gpu') == 'gpu'
  assert stack.check_accelerator(cpu_only, backend='tpu') == 'tpu'
  with pytest.raises(
      stack.StackError,
      match='no accelerator plugin ' r"installed .*'jax\[cuda12\]'",
  ):
    stack.check_accelerator(cpu_only, backend='cpu')
  cuda = _versions(
      jax='0.10.2',
      jaxlib='0.10.2',
      jax_cuda12_plugin='0.10.2',
      jax_cuda12_pjrt='0.10.2',
  )
  with pytest.raises(
      stack.StackError,
      match=r'jax-cuda12-plugin 0\.10\.2 installed but no '
      r'usable GPU .*CUDA_VISIBLE_DEVICES=<unset>\)',
  ):
    stack.check_accelerator(cuda, backend='cpu', env={})
  tpu = _versions(jax='0.10.2', jaxlib='0.10.2', libtpu='0.0.42.1')
  with pytest.raises(
      stack.StackError, match=r'libtpu 0\.0\.42\.1 installed but no usable TPU'
  ):
    stack.check_accelerator(tpu, backend='cpu')


def test_resources_line():
  device = types.SimpleNamespace(device_kind='NVIDIA H100', platform='gpu')
  line = stack.resources(
      env={
          'CUDA_VISIBLE_DEVICES': '0,1',
          'SLURM_CPUS_PER_TASK': '32',
          'HOME': '/x',
      },
      affinity_fn=lambda pid: set(range(32)),
      cpu_count_fn=lambda: 128,
      devices=[device, device],
  )
  assert line == (
      'CPUs 32 usable of 128; CUDA_VISIBLE_DEVICES=0,1; '
      'SLURM_CPUS_PER_TASK=32; local devices: 2 x NVIDIA H100 '
      '(gpu)'
  )


# ---------------------------------------------------------- main's two flags
_MAIN_WITH_PINS = """
import pathlib, sys
from absl import app
from byol_jax.hosts import stack
stack.CONSTRAINTS = pathlib.Path(sys.argv[1])
from byol_jax import main
if sys.argv[2] == '--stand-in-run':  # main's checks and logs, no training
  main.run = lambda config, workdir, explicit, on_checked: on_checked()
  del sys.argv[2]
app.run(main.main, argv=['main'] + sys.argv[2:], flags_parser=main.parse_flags)
"""


def _main(tmp_path, pins, *flags, stand_in_run=False):
  constraints = tmp_path / 'constraints.txt'
  constraints.write_text(''.join(f'{k}=={v}\n' for k, v in pins.items()))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(
      [
          sys.executable,
          '-c',
          _MAIN_WITH_PINS,
          str(constraints),
          *(['--stand-in-run'] if stand_in_run else []),
          f'--config={EXPERIMENTS}/quickstart.py',
          f'--workdir={tmp_path / "run"}',
          *flags,
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=180,
  )


def _installed_pins():
  return {k: v for k, v in stack.installed().items() if v is not None}


def test_require_accelerator_stops_a_cpu_run_in_one_line(tmp_path):
  proc = _main(tmp_path, _installed_pins(), '--require_accelerator')
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(
      'Stack error: --require_accelerator: JAX found '
      'no GPU or TPU (jax.default_backend() is cpu)'
  )
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'run').exists()  # nothing was started


def test_require_pinned_stack_refuses_other_versions(tmp_path):
  pins = dict(_installed_pins(), jax='0.4.35', jaxlib='0.4.35')
  proc = _main(
      tmp_path, pins, '--require_pinned_stack', '--require_accelerator'
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  jax_version = importlib.metadata.version('jax')
  assert lines[0].startswith(
      'Stack error: not the pinned stack of '
      f'constraints.txt: jax {jax_version} (pinned '
      f'0.4.35), jaxlib '
  )
  assert not (tmp_path / 'run').exists()


def test_pins_are_only_enforced_when_asked(tmp_path):
  # The same wrong pins: without --require_pinned_stack the run goes on to
  # the next check (a local run on other versions works); with the installed
  # versions as pins, --require_pinned_stack lets it through too.
  wrong = dict(_installed_pins(), jax='0.4.35')
  for pins, flags in (
      (wrong, ()),
      (_installed_pins(), ('--require_pinned_stack',)),
  ):
    proc = _main(tmp_path, pins, *flags, '--require_accelerator')
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'not the pinned stack' not in proc.stderr
    assert 'Stack error: --require_accelerator' in proc.stderr


def test_a_run_logs_its_stack_and_what_it_may_use(tmp_path):
  # The pinned stack passes; then the run (a stand-in here) logs the
  # versions it got and the CPUs and devices it sees.
  proc = _main(
      tmp_path, _installed_pins(), '--require_pinned_stack', stand_in_run=True
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  jax_version = importlib.metadata.version('jax')
  jaxlib_version = importlib.metadata.version('jaxlib')
  assert re.search(
      rf'Stack: Python 3\.\d+\.\d+, jax {jax_version}, '
      rf'jaxlib {jaxlib_version}$',
      proc.stderr,
      re.M,
  ), proc.stderr
  usable = len(os.sched_getaffinity(0))
  assert re.search(
      rf'Visible to this process: CPUs {usable} usable of '
      rf'{os.cpu_count()}; local devices: 8 x cpu \(cpu\)$',
      proc.stderr,
      re.M,
  ), proc.stderr
