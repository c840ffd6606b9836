"""launch/: the printed commands of --dry-run (under old bash rules too),
usage errors, bash 3.2 safety and shellcheck. tests/test_tpu_pod.py runs
tpu_pod.sh for real against a stand-in gcloud."""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch'
SCRIPTS = sorted(p for p in LAUNCH.iterdir() if p.suffix in ('.sh', '.sbatch'))
SHELL_FILES = SCRIPTS + [REPO / '.ci' / 'run']
TPU_ARGS = [
    '--zone=europe-west4-a',
    '--accelerator-type=v3-32',
    '--runtime-version=tpu-ubuntu2204-base',
    '--bucket=gs://byol-runs/',
]
PINNED_JAX = re.search(
    r'^jax==(\S+)$', (REPO / 'constraints.txt').read_text(), re.M
).group(1)
REQUIRE = ['--require_accelerator', '--require_pinned_stack']


def _bash_version(bash):
  try:
    out = subprocess.run(
        [bash, '-c', 'echo "${BASH_VERSINFO[0]}.' '${BASH_VERSINFO[1]}"'],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    return tuple(int(x) for x in out.split('.'))
  except (OSError, ValueError, subprocess.SubprocessError):
    return None


def _old_bashes():
  """Bash binaries older than 4.4 on this machine (macOS's /bin/bash is 3.2).

  BYOL_OLD_BASH (':'-separated paths) names builds the search would miss.
  """
  names = os.environ.get('BYOL_OLD_BASH', '').split(':') + [
      '/bin/bash',
      'bash3',
      'bash3.2',
      'bash-3.2',
      'bash4.0',
      'bash4.1',
      'bash4.2',
      'bash-4.2',
      'bash4.3',
  ]
  found = {}
  for name in filter(None, names):
    path = shutil.which(name)
    version = path and _bash_version(path)
    if version and version < (4, 4):
      found[os.path.realpath(path)] = version
  return sorted(found.items(), key=lambda kv: kv[1])


_OLD = _old_bashes()
# (bash, BASH_COMPAT): the current bash, the current bash emulating 3.2's and
# 4.2's rules where it can (quoting, [[ =~ ]]; not set -u on empty arrays),
# and every old bash found here.
SHELLS = [
    pytest.param(('bash', None), id='bash'),
    pytest.param(('bash', '3.2'), id='bash-compat-3.2'),
    pytest.param(('bash', '4.2'), id='bash-compat-4.2'),
]
SHELLS += [
    pytest.param((path, None), id=f'bash-{v[0]}.{v[1]}') for path, v in _OLD
] or [
    pytest.param(
        ('bash', None),
        id='old-bash',
        marks=pytest.mark.skip(
            reason='no bash older than 4.4 here (macOS /bin/bash is '
            '3.2; or set BYOL_OLD_BASH=/path/to/bash-3.2): '
            'test_bash_3_2_rules checks the scripts statically'
        ),
    )
]
EXTRA = {
    'no-extra': [],
    'empty-extra': ['--'],
    'extra': ['--', '--config.training.max_steps=1000'],
}


def _run(script, *args, env=None, shell=('bash', None), cwd=REPO):
  bash, compat = shell
  env = dict(os.environ if env is None else env)
  env.pop('BASH_COMPAT', None)
  if compat:
    env['BASH_COMPAT'] = compat
  return subprocess.run(
      [bash, str(LAUNCH / script), *args],
      cwd=cwd,
      capture_output=True,
      text=True,
      timeout=60,
      env=env,
  )


def _commands(script, *args, env=None, shell=('bash', None), cwd=REPO):
  """The argv of every '+ ' line a --dry-run prints, in order."""
  proc = _run(script, '--dry-run', *args, env=env, shell=shell, cwd=cwd)
  assert proc.returncode == 0, proc.stderr
  lines = [l[2:] for l in proc.stdout.splitlines() if l.startswith('+ ')]
  # Background pipelines of gpu_single_host.sh: keep the command itself.
  return [shlex.split(l.split(' 2>&1 | sed')[0]) for l in lines], proc.stdout


def _remote(argv):
  """The --command=... of a gcloud ssh argv (a shell command line)."""
  (command,) = [
      a[len('--command=') :] for a in argv if a.startswith('--command=')
  ]
  return command


def _main_flags(start_command):
  """MAIN_FLAGS of `bash ~/byol_jax/launch/tpu_worker.sh start URL -- ...`."""
  words = shlex.split(start_command)
  assert words[:3] == ['bash', '~/byol_jax/launch/tpu_worker.sh', 'start']
  assert words[4] == '--'
  return words[3], words[5:]


def test_scripts_exist():
  assert {p.name for p in SCRIPTS} >= {
      'tpu_pod.sh',
      'tpu_worker.sh',
      'gpu_single_host.sh',
      'lib.sh',
      'slurm_multinode.sbatch',
  }


# ------------------------------------------------------------------ dry runs
@pytest.mark.parametrize('extra', EXTRA.values(), ids=EXTRA.keys())
@pytest.mark.parametrize('shell', SHELLS)
def test_tpu_pod_dry_run(shell, extra):
  cmds, out = _commands(
      'tpu_pod.sh',
      *TPU_ARGS,
      '--project=my-project',
      '--config=experiments/byol_bn.py:epochs=100',
      '--data-dir=gs://byol-data/tfds',
      *extra,
      shell=shell,
  )
  verbs = [tuple(c[:5]) for c in cmds]
  tpu = ('gcloud', 'compute', 'tpus', 'tpu-vm')
  assert verbs == [
      tpu + (v,)
      for v in (
          'describe',
          'create',
          'scp',
          'ssh',
          'ssh',
          'ssh',
          'ssh',
          'delete',
      )
  ]
  describe, create, scp, install, start, wait, status, delete = cmds
  for c in (describe, create, install, start, wait, status, delete):
    assert c[5] == 'byol-v3-32'  # The same TPU VMs throughout ...
  assert scp[6] == 'byol-v3-32:byol_jax.tar.gz'
  for c in cmds:  # ... in the same zone and project.
    assert '--zone=europe-west4-a' in c and '--project=my-project' in c
  assert create[6:] == [
      '--zone=europe-west4-a',
      '--project=my-project',
      '--accelerator-type=v3-32',
      '--version=tpu-ubuntu2204-base',
  ]
  for c in (scp, install, start, wait, status):
    assert '--worker=all' in c
  assert _remote(install) == (
      'rm -rf ~/byol_jax && mkdir -p ~/byol_jax && tar -xzf ~/byol_jax.tar.gz'
      ' -C ~/byol_jax && bash ~/byol_jax/launch/tpu_worker.sh install'
  )
  # The same main command on every worker, writing to the bucket, reading
  # TFDS from it, with the accelerator and the pinned stack required.
  log_url, flags = _main_flags(_remote(start))
  assert log_url == 'gs://byol-runs/byol_bn/logs'
  assert flags == [
      '--config=experiments/byol_bn.py:epochs=100',
      '--workdir=gs://byol-runs/byol_bn',
      *REQUIRE,
      '--config.data.data_dir=gs://byol-data/tfds',
      *extra[1:],
  ]
  assert _remote(wait) == 'bash ~/byol_jax/launch/tpu_worker.sh wait'
  assert _remote(status) == 'bash ~/byol_jax/launch/tpu_worker.sh status'
  assert delete[6:] == [
      '--zone=europe-west4-a',
      '--project=my-project',
      '--quiet',
  ]
  assert (
      out.rstrip()
      .splitlines()[-1]
      .startswith('+ gcloud compute tpus ' 'tpu-vm delete')
  )
  # How to re-attach: this command line, less --dry-run.
  reattach = shlex.join(
      [
          str(LAUNCH / 'tpu_pod.sh'),
          '--attach',
          *TPU_ARGS,
          '--project=my-project',
          '--config=experiments/byol_bn.py:epochs=100',
          '--data-dir=gs://byol-data/tfds',
          *extra,
      ]
  )
  assert f'#  {reattach}' in out.splitlines(), out


def test_tpu_pod_keep_queued_spot_and_names():
  cmds, out = _commands(
      'tpu_pod.sh',
      *TPU_ARGS,
      '--keep',
      '--name=pod1',
      '--run=try2',
      '--spot',
      '--queued',
  )
  queue = ['gcloud', 'compute', 'tpus', 'queued-resources']
  assert cmds[0][:6] == queue + ['describe', 'pod1']
  assert cmds[1] == queue + [
      'create',
      'pod1',
      '--zone=europe-west4-a',
      '--node-id=pod1',
      '--accelerator-type=v3-32',
      '--runtime-version=tpu-ubuntu2204-base',
      '--spot',
  ]
  assert [c[4] for c in cmds[2:]] == ['scp', 'ssh', 'ssh', 'ssh', 'ssh']
  assert '--workdir=gs://byol-runs/try2' in _remote(cmds[4])
  assert not any('delete' in c for c in cmds)  # --keep
  assert (
      'queued-resources delete pod1 --zone=europe-west4-a --force ' '--quiet'
  ) in out


@pytest.mark.parametrize('extra', EXTRA.values(), ids=EXTRA.keys())
@pytest.mark.parametrize('shell', SHELLS)
def test_gpu_single_host_installs_cuda_jax_and_uses_all_gpus(
    shell, extra, tmp_path
):
  venv = tmp_path / 'venv'
  cmds, _ = _commands(
      'gpu_single_host.sh',
      '--config=experiments/gn_ws.py',
      '--workdir=/data/run',
      '--gpus=0,1,2,3',
      f'--venv={venv}',
      f'--python={sys.executable}',
      *extra,
      shell=shell,
  )
  assert cmds == [
      [sys.executable, '-m', 'venv', str(venv)],
      [
          f'{venv}/bin/python',
          '-m',
          'pip',
          'install',
          '-q',
          '-c',
          f'{REPO}/constraints.txt',
          '-e',
          str(REPO),
          f'jax[cuda12]=={PINNED_JAX}',
      ],
      [
          'env',
          'CUDA_VISIBLE_DEVICES=0,1,2,3',
          f'{venv}/bin/python',
          '-m',
          'byol_jax.main',
          '--config=experiments/gn_ws.py',
          '--workdir=/data/run',
          *REQUIRE,
          '--distributed=off',
          *extra[1:],
      ],
  ]


def test_gpu_single_host_several_processes_split_the_gpus(tmp_path):
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  (venv / 'bin' / 'python').symlink_to(sys.executable)
  cmds, out = _commands(
      'gpu_single_host.sh',
      '--config=experiments/gn_ws.py',
      '--workdir=/data/run',
      '--gpus=0,1,2,3,4,5',
      '--processes=3',
      '--port=23456',
      f'--venv={venv}',
  )
  # An existing venv is not created again; pip brings it to the pins.
  assert cmds[0][:5] == [f'{venv}/bin/python', '-m', 'pip', 'install', '-q']
  runs = cmds[1:]
  assert [c[1] for c in runs] == [
      'CUDA_VISIBLE_DEVICES=0,1',
      'CUDA_VISIBLE_DEVICES=2,3',
      'CUDA_VISIBLE_DEVICES=4,5',
  ]
  for i, c in enumerate(runs):
    assert c[2:] == [
        f'{venv}/bin/python',
        '-m',
        'byol_jax.main',
        '--config=experiments/gn_ws.py',
        '--workdir=/data/run',
        *REQUIRE,
        '--coordinator_address=127.0.0.1:23456',
        '--num_processes=3',
        f'--process_id={i}',
    ]
  assert 'sed "s/^/[2] /" &' in out
  # --no-install: the venv as it is.
  cmds, _ = _commands(
      'gpu_single_host.sh',
      '--config=c',
      '--workdir=/w',
      '--gpus=0',
      f'--venv={venv}',
      '--no-install',
  )
  assert len(cmds) == 1 and cmds[0][2] == f'{venv}/bin/python'


@pytest.mark.parametrize('shell', SHELLS)
def test_gpu_single_host_resolves_a_relative_workdir_from_the_caller(
    shell, tmp_path
):
  """The run starts in the checkout: a relative --workdir (and --venv) is
  made absolute against the caller's directory, a gs:// URL is kept."""
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  (venv / 'bin' / 'python').symlink_to(sys.executable)
  for workdir, expected in (
      ('runs/a', f'{tmp_path}/runs/a'),
      ('gs://bucket/runs/a', 'gs://bucket/runs/a'),
  ):
    cmds, _ = _commands(
        'gpu_single_host.sh',
        '--config=experiments/gn_ws.py',
        f'--workdir={workdir}',
        '--gpus=0',
        '--venv=venv',
        '--no-install',
        shell=shell,
        cwd=tmp_path,
    )
    assert cmds == [
        [
            'env',
            'CUDA_VISIBLE_DEVICES=0',
            f'{venv}/bin/python',
            '-m',
            'byol_jax.main',
            '--config=experiments/gn_ws.py',
            f'--workdir={expected}',
            *REQUIRE,
            '--distributed=off',
        ]
    ]


@pytest.mark.parametrize('extra', EXTRA.values(), ids=EXTRA.keys())
@pytest.mark.parametrize('shell', SHELLS)
def test_slurm_dry_run_installs_then_runs_one_task_per_node(
    shell, extra, tmp_path
):
  venv = tmp_path / 'venv'
  env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
  cmds, _ = _commands(
      'slurm_multinode.sbatch',
      '--config=experiments/gn_ws.py',
      '--workdir=/shared/runs/gn_ws',
      f'--venv={venv}',
      f'--python={sys.executable}',
      '--port=23456',
      *extra,
      env=env,
      shell=shell,
  )
  assert cmds == [
      ['cd', str(REPO)],
      [sys.executable, '-m', 'venv', str(venv)],
      [
          f'{venv}/bin/python',
          '-m',
          'pip',
          'install',
          '-q',
          '-c',
          f'{REPO}/constraints.txt',
          '-e',
          str(REPO),
          f'jax[cuda12]=={PINNED_JAX}',
      ],
      ['export', 'BYOL_COORDINATOR_PORT=23456'],
      # srun does not inherit sbatch's --cpus-per-task (SLURM 22.05+): the
      # #SBATCH default outside a job.
      [
          'srun',
          '--ntasks-per-node=1',
          '--cpus-per-task=32',
          '--kill-on-bad-exit=1',
          f'{venv}/bin/python',
          '-m',
          'byol_jax.main',
          '--config=experiments/gn_ws.py',
          '--workdir=/shared/runs/gn_ws',
          *REQUIRE,
          *extra[1:],
      ],
  ]
  text = (LAUNCH / 'slurm_multinode.sbatch').read_text()
  assert '#SBATCH --ntasks-per-node=1' in text
  assert '#SBATCH --cpus-per-task=32' in text


def test_slurm_passes_the_jobs_cpus_per_task_and_installs_apart(tmp_path):
  venv = tmp_path / 'venv'
  env = dict(os.environ, SLURM_CPUS_PER_TASK='12')
  cmds, _ = _commands(
      'slurm_multinode.sbatch',
      '--config=c',
      '--workdir=w',
      f'--venv={venv}',
      f'--python={sys.executable}',
      env=env,
  )
  assert cmds[-1][:4] == [
      'srun',
      '--ntasks-per-node=1',
      '--cpus-per-task=12',
      '--kill-on-bad-exit=1',
  ]
  # On a login node: only the install; then submit with --no-install.
  cmds, _ = _commands(
      'slurm_multinode.sbatch',
      '--install-only',
      f'--venv={venv}',
      f'--python={sys.executable}',
  )
  assert [c[:3] for c in cmds] == [
      [sys.executable, '-m', 'venv'],
      [f'{venv}/bin/python', '-m', 'pip'],
  ]


# ------------------------------------------------------------- usage errors
@pytest.mark.parametrize(
    'script,args,message',
    [
        ('tpu_pod.sh', TPU_ARGS[1:], '--zone is required'),
        (
            'tpu_pod.sh',
            TPU_ARGS[:2] + TPU_ARGS[3:],
            '--runtime-version is required',
        ),
        (
            'tpu_pod.sh',
            TPU_ARGS[:3] + ['--bucket=/tmp/x'],
            'must be a gs:// URL',
        ),
        (
            'tpu_pod.sh',
            TPU_ARGS + ['--data-dir=/data/tfds'],
            '--data-dir=/data/tfds must be a gs:// URL',
        ),
        (
            'tpu_pod.sh',
            TPU_ARGS + ['--config=experiments/nope.py'],
            'experiments/nope.py is not a file',
        ),
        (
            'tpu_pod.sh',
            TPU_ARGS + ['--zones=x'],
            "unknown argument '--zones=x'",
        ),
        (
            'gpu_single_host.sh',
            ['--workdir=/tmp/w', '--gpus=0'],
            '--config is required',
        ),
        (
            'gpu_single_host.sh',
            ['--config=c', '--workdir=/tmp/w', '--gpus=0,1,2', '--processes=2'],
            '--gpus=0,1,2 (3 GPUs) does not split into --processes=2',
        ),
        (
            'gpu_single_host.sh',
            ['--config=c', '--workdir=/tmp/w', '--gpus=0', '--port=70000'],
            '--port=70000 must be a TCP port',
        ),
        (
            'gpu_single_host.sh',
            [
                '--config=c',
                '--workdir=/tmp/w',
                '--gpus=0',
                '--venv=/nonexistent/v',
                '--no-install',
            ],
            '--venv=/nonexistent/v has no bin/python',
        ),
        ('slurm_multinode.sbatch', ['--config=c'], '--workdir is required'),
    ],
)
def test_usage_errors_name_the_argument(script, args, message):
  proc = _run(script, '--dry-run', *args)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert len(proc.stderr.splitlines()) == 1, proc.stderr  # one line
  assert proc.stdout == ''  # Nothing was printed as run.


def test_gpu_scripts_refuse_a_python_older_than_3_11(tmp_path):
  old = tmp_path / 'python3.10'
  old.write_text(
      '#!/bin/sh\n' 'case "$2" in *exit*) exit 1;; *) echo 3.10;; esac\n'
  )
  old.chmod(0o755)
  for script in ('gpu_single_host.sh', 'slurm_multinode.sbatch'):
    proc = _run(
        script,
        '--dry-run',
        '--config=c',
        '--workdir=w',
        '--gpus=0',
        f'--venv={tmp_path / "v"}',
        f'--python={old}',
    )
    if script == 'slurm_multinode.sbatch':  # no --gpus there
      proc = _run(
          script,
          '--dry-run',
          '--config=c',
          '--workdir=w',
          f'--venv={tmp_path / "v"}',
          f'--python={old}',
      )
    assert proc.returncode == 2, proc.stderr
    assert (
        f'--python={old} is Python 3.10; the tested stack needs 3.11 or '
        'later'
    ) in proc.stderr
    assert proc.stdout.count('+ ') <= 1  # at most the `cd`


@pytest.mark.parametrize(
    'script,first,last',
    [
        (
            'tpu_pod.sh',
            'Pre-trains on a Cloud TPU pod slice',
            'set the reconnection and queue polling.',
        ),
        (
            'gpu_single_host.sh',
            'Pre-trains on the GPUs of one machine.',
            (
                'prefixed with [i]. --dry-run prints every command without '
                'running any.'
            ),
        ),
        (
            'slurm_multinode.sbatch',
            'Pre-trains on several GPU nodes',
            'without running them.',
        ),
    ],
)
def test_help_prints_the_header(script, first, last):
  proc = _run(script, '--help')
  assert proc.returncode == 0 and proc.stdout == ''
  lines = proc.stderr.splitlines()
  assert lines[0].startswith(first) and lines[-1] == last, proc.stderr
  assert not any(l.startswith(('#', 'set -euo', 'SBATCH')) for l in lines)


def test_slurm_refuses_to_run_outside_a_job():
  env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
  proc = _run('slurm_multinode.sbatch', '--config=c', '--workdir=w', env=env)
  assert proc.returncode == 2 and 'not inside a SLURM job' in proc.stderr


# ------------------------------------------------------- bash 3.2 and later
# bash < 4.4 stops on "${a[@]}" of an empty array under set -u, and bash < 4.1
# on "$@" without arguments; these are bash 4+ only.
_BASH4 = {
    'mapfile/readarray': r'\b(mapfile|readarray)\b',
    'associative array': r'\b(declare|local|typeset)\s+-\w*A',
    'declare -g / nameref': r'\b(declare|local|typeset)\s+-\w*[gn]\b',
    'case modification': r'\$\{\w+(\[[^]]*\])?(\^|,)',
    '[[ -v ]]': r'\[\[\s+-v\s',
    'wait -n': r'\bwait\s+-n\b',
    'coproc': r'\bcoproc\b',
    '&>> or |&': r'&>>|\|&',
    'case ;& or ;;&': r';;&|\s;&\s',
    'BASHPID / EPOCH*': r'\bBASHPID\b|\bEPOCH(SECONDS|REALTIME)\b',
    '{fd}> redirection': r'\{\w+\}[<>]',
    'negative index': r'\[-\d+\]\}',
    '${x@Q} operators': r'\$\{\w+(\[[^]]*\])?@[QEPAaULuK]\}',
    'globstar/lastpipe': r'shopt\s+-s\s+(globstar|lastpipe)',
}


def _code(path):
  """The file without its comment lines."""
  return '\n'.join(
      l for l in path.read_text().splitlines() if not l.lstrip().startswith('#')
  )


def test_bash_3_2_rules():
  problems = []
  for path in SHELL_FILES:
    code = _code(path)
    # Arrays that may be empty: assigned () or a guarded expansion.
    maybe_empty = set(re.findall(r'\b(\w+)=\((?:\)|\$\{\w+(?:\[@\])?\+)', code))
    guarded = re.sub(r'\$\{(\w+)\[@\]\+"\$\{\1\[@\]\}"\}', '', code)
    guarded = guarded.replace('${1+"$@"}', '')
    for name in re.findall(r'\$\{(\w+)\[[@*]\]', guarded):
      if name in maybe_empty:
        problems.append(
            f'{path.name}: "${{{name}[@]}}" unguarded (use '
            f'${{{name}[@]+"${{{name}[@]}}"}})'
        )
    if re.search(r'\$[@*]|\$\{[@*]\}', guarded):
      problems.append(f'{path.name}: "$@" unguarded (use ${{1+"$@"}})')
    for what, pattern in _BASH4.items():
      if re.search(pattern, code):
        problems.append(f'{path.name}: {what} needs bash 4')
  assert not problems, '\n'.join(problems)


def test_bash_3_2_rules_catch_what_bash_3_2_trips_on(tmp_path):
  # The check itself: the old scripts' expansion is caught.
  bad = tmp_path / 'bad.sh'
  bad.write_text('extra=()\nmain=(python "${extra[@]}")\nrun "$@"\n')
  code = _code(bad)
  assert re.findall(r'\$\{(\w+)\[[@*]\]', code) == ['extra']
  assert re.search(r'\$[@*]|\$\{[@*]\}', code)


@pytest.mark.parametrize('script', [p.name for p in SCRIPTS] + ['../.ci/run'])
def test_shellcheck(script):
  if shutil.which('shellcheck') is None:
    pytest.skip(
        'shellcheck is not installed (Debian/Ubuntu: apt-get install '
        'shellcheck; .ci/run installs it)'
    )
  # -x: follow the scripts' `source lib.sh` (checked with them).
  proc = subprocess.run(
      ['shellcheck', '-x', '--severity=style', str(LAUNCH / script)],
      capture_output=True,
      text=True,
      timeout=60,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
