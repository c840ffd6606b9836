"""launch/: the printed commands of --dry-run, usage errors, and shellcheck."""

import os
import pathlib
import shlex
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch'
SCRIPTS = sorted(p for p in LAUNCH.iterdir() if p.suffix in ('.sh', '.sbatch'))
TPU_ARGS = ['--zone=europe-west4-a', '--accelerator-type=v3-32',
            '--runtime-version=tpu-ubuntu2204-base', '--bucket=gs://byol-runs/']


def _run(script, *args, env=None):
  return subprocess.run(['bash', str(LAUNCH / script), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=60,
                        env=env)


def _commands(script, *args, env=None):
  """The argv of every '+ ' line a --dry-run prints, in order."""
  proc = _run(script, '--dry-run', *args, env=env)
  assert proc.returncode == 0, proc.stderr
  lines = [l[2:] for l in proc.stdout.splitlines() if l.startswith('+ ')]
  # Background pipelines of gpu_single_host.sh: keep the command itself.
  return [shlex.split(l.split(' 2>&1 | sed')[0]) for l in lines], proc.stdout


def _remote(argv):
  """The --command=... of a gcloud ssh argv (a shell command line)."""
  (command,) = [a[len('--command='):] for a in argv
                if a.startswith('--command=')]
  return command


def test_scripts_exist():
  assert {p.name for p in SCRIPTS} >= {'tpu_pod.sh', 'gpu_single_host.sh',
                                       'slurm_multinode.sbatch'}


def test_tpu_pod_dry_run_creates_installs_runs_everywhere_and_deletes():
  cmds, out = _commands('tpu_pod.sh', *TPU_ARGS, '--project=my-project',
                        '--config=experiments/byol_bn.py:epochs=100',
                        '--', '--config.training.max_steps=1000')
  verbs = [tuple(c[:5]) for c in cmds]
  tpu = ('gcloud', 'compute', 'tpus', 'tpu-vm')
  assert verbs == [tpu + ('create',), tpu + ('scp',), tpu + ('ssh',),
                   tpu + ('ssh',), tpu + ('delete',)]
  create, scp, install, train, delete = cmds
  for c in (create, install, train, delete):
    assert c[5] == 'byol-v3-32'  # The same TPU VMs throughout ...
  assert scp[6] == 'byol-v3-32:byol_jax.tar.gz'
  for c in cmds:  # ... in the same zone and project.
    assert '--zone=europe-west4-a' in c and '--project=my-project' in c
  assert '--accelerator-type=v3-32' in create
  assert '--version=tpu-ubuntu2204-base' in create
  for c in (scp, install, train):
    assert '--worker=all' in c
  assert 'pip install -q -e ~/byol_jax "jax[tpu]' in _remote(install)
  # The same main command on every worker, writing to the bucket.
  remote = _remote(train)
  main = shlex.split(remote.split(' && ')[-1].split(' 2>&1')[0])
  assert main == ['python', '-m', 'byol_jax.main',
                  '--config=experiments/byol_bn.py:epochs=100',
                  '--workdir=gs://byol-runs/byol_bn',
                  '--config.training.max_steps=1000']
  assert remote.startswith('set -o pipefail; cd ~/byol_jax')
  assert delete[-1] == '--quiet'
  assert out.rstrip().splitlines()[-1].startswith('+ gcloud compute tpus '
                                                  'tpu-vm delete')


def test_tpu_pod_keep_and_names():
  cmds, out = _commands('tpu_pod.sh', *TPU_ARGS, '--keep', '--name=pod1',
                        '--run=try2', '--spot')
  assert [c[4] for c in cmds] == ['create', 'scp', 'ssh', 'ssh']
  assert '--spot' in cmds[0] and cmds[0][5] == 'pod1'
  assert '--workdir=gs://byol-runs/try2' in _remote(cmds[3])
  assert 'tpu-vm delete pod1 --zone=europe-west4-a --quiet' in out


@pytest.mark.parametrize('script,args,message', [
    ('tpu_pod.sh', TPU_ARGS[1:], '--zone is required'),
    ('tpu_pod.sh', TPU_ARGS[:2] + TPU_ARGS[3:], '--runtime-version is required'),
    ('tpu_pod.sh', TPU_ARGS[:3] + ['--bucket=/tmp/x'], 'must be a gs:// URL'),
    ('tpu_pod.sh', TPU_ARGS + ['--config=experiments/nope.py'],
     'experiments/nope.py is not a file'),
    ('tpu_pod.sh', TPU_ARGS + ['--zones=x'], "unknown argument '--zones=x'"),
    ('gpu_single_host.sh', ['--workdir=/tmp/w', '--gpus=0'],
     '--config is required'),
    ('gpu_single_host.sh', ['--config=c', '--workdir=/tmp/w', '--gpus=0,1,2',
                            '--processes=2'],
     '--gpus=0,1,2 (3 GPUs) does not split into --processes=2'),
    ('gpu_single_host.sh', ['--config=c', '--workdir=/tmp/w', '--gpus=0',
                            '--port=70000'], '--port=70000 must be a TCP port'),
    ('slurm_multinode.sbatch', ['--config=c'], '--workdir is required'),
])
def test_usage_errors_name_the_argument(script, args, message):
  proc = _run(script, '--dry-run', *args)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert proc.stdout == ''  # Nothing was printed as run.


def test_gpu_single_host_one_process_uses_all_gpus():
  cmds, _ = _commands('gpu_single_host.sh', '--config=experiments/gn_ws.py',
                      '--workdir=/data/run', '--gpus=0,1,2,3', '--',
                      '--config.training.max_steps=10')
  assert cmds == [['env', 'CUDA_VISIBLE_DEVICES=0,1,2,3', 'python', '-m',
                   'byol_jax.main', '--config=experiments/gn_ws.py',
                   '--workdir=/data/run', '--distributed=off',
                   '--config.training.max_steps=10']]


def test_gpu_single_host_several_processes_split_the_gpus():
  cmds, out = _commands('gpu_single_host.sh', '--config=experiments/gn_ws.py',
                        '--workdir=/data/run', '--gpus=0,1,2,3,4,5',
                        '--processes=3', '--port=23456')
  assert len(cmds) == 3
  groups = [c[1] for c in cmds]
  assert groups == ['CUDA_VISIBLE_DEVICES=0,1', 'CUDA_VISIBLE_DEVICES=2,3',
                    'CUDA_VISIBLE_DEVICES=4,5']
  for i, c in enumerate(cmds):
    assert c[2:] == ['python', '-m', 'byol_jax.main',
                     '--config=experiments/gn_ws.py', '--workdir=/data/run',
                     '--coordinator_address=127.0.0.1:23456',
                     '--num_processes=3', f'--process_id={i}']
  assert 'sed "s/^/[2] /" &' in out


def test_slurm_dry_run_runs_one_task_per_node():
  cmds, _ = _commands('slurm_multinode.sbatch',
                      '--config=experiments/gn_ws.py',
                      '--workdir=/shared/runs/gn_ws', '--venv=/opt/byol',
                      '--port=23456', '--', '--config.seed=1')
  assert cmds == [
      ['cd', str(REPO)],
      ['source', '/opt/byol/bin/activate'],
      ['export', 'BYOL_COORDINATOR_PORT=23456'],
      ['srun', '--ntasks-per-node=1', '--kill-on-bad-exit=1', 'python', '-m',
       'byol_jax.main', '--config=experiments/gn_ws.py',
       '--workdir=/shared/runs/gn_ws', '--config.seed=1']]
  text = (LAUNCH / 'slurm_multinode.sbatch').read_text()
  assert '#SBATCH --ntasks-per-node=1' in text


def test_slurm_refuses_to_run_outside_a_job():
  env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
  proc = _run('slurm_multinode.sbatch', '--config=c', '--workdir=w', env=env)
  assert proc.returncode == 2 and 'not inside a SLURM job' in proc.stderr


@pytest.mark.parametrize('script', [p.name for p in SCRIPTS] + ['../.ci/run'])
def test_shellcheck(script):
  if shutil.which('shellcheck') is None:
    pytest.skip('shellcheck is not installed (Debian/Ubuntu: apt-get install '
                'shellcheck; .ci/run installs it)')
  # -x: follow the scripts' `source lib.sh` (checked with them).
  proc = subprocess.run(['shellcheck', '-x', '--severity=style',
                         str(LAUNCH / script)], capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr
