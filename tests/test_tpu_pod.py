"""launch/tpu_pod.sh driven through a stand-in gcloud: the whole cycle.

tests/fixtures/gcloud_stand_in.py logs every gcloud call and plays the TPU VMs
as local directories (one home per worker); a stand-in uv makes the workers'
virtual environment with a stand-in python that logs byol_jax.main's
arguments. launch/tpu_worker.sh runs for real on those "workers": the
detached start, the log copies to the bucket, wait and status.
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch'
STAND_IN = REPO / 'tests' / 'fixtures' / 'gcloud_stand_in.py'
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


def _fake_bin(tmp_path):
  """bin/ with a stand-in gcloud, a stand-in uv (its `venv` makes a stand-in
  python that logs byol_jax.main's argv) for the "workers"."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log_json = (
      f'"{sys.executable}" -c \'import json, os, sys; '
      'print(json.dumps({"worker": os.environ.get("BYOL_WORKER_ID"), '
      '"home": os.environ["HOME"], "cwd": os.getcwd(), '
      '"argv": sys.argv[1:]}))\' "$@"'
  )
  stand_ins = {
      'gcloud': f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN}" "$@"\n',
      'uv': (
          '#!/usr/bin/env bash\n'
          f'{log_json} >> "$FAKE_GCLOUD_DIR/uv.jsonl"\n'
          'if [[ $1 == venv ]]; then\n'
          '  mkdir -p "${!#}/bin" && cp "$FAKE_PYTHON" "${!#}/bin/python"\n'
          'fi\n'
      ),
      'python': (
          '#!/usr/bin/env bash\n'
          '[[ $1 != -c ]] || exit 0  # the version check: 3.11\n'
          f'{log_json} >> "$FAKE_GCLOUD_DIR/main.jsonl"\n'
          'echo "step 1 of 10, loss 0.5"\n'
          'sleep "${FAKE_MAIN_SLEEP:-0}"\n'
          # Until the test releases it (timing-free under load).
          'for _ in $(seq 600); do\n'
          '  [[ -z $FAKE_MAIN_UNTIL || -e $FAKE_MAIN_UNTIL ]] && break\n'
          '  sleep 0.2\n'
          'done\n'
          'exit "${FAKE_MAIN_RC:-0}"\n'
      ),
  }
  for name, text in stand_ins.items():
    path = (bin_dir if name != 'python' else tmp_path) / name
    path.write_text(text)
    path.chmod(0o755)
  return bin_dir


class Pod:
  """launch/ in a throwaway git checkout, run against the stand-in gcloud."""

  def __init__(self, tmp_path):
    self.repo = tmp_path / 'repo'
    (self.repo / 'experiments').mkdir(parents=True)
    shutil.copytree(LAUNCH, self.repo / 'launch')
    shutil.copy(REPO / 'constraints.txt', self.repo)
    shutil.copy(REPO / 'experiments' / 'gn_ws.py', self.repo / 'experiments')
    self.git('init', '-q')
    self.git('add', '.')
    self.git('commit', '-qm', 'checkout')
    self.state = tmp_path / 'gcloud'
    self.env = dict(
        os.environ,
        PATH=f'{_fake_bin(tmp_path)}:{os.environ["PATH"]}',
        FAKE_GCLOUD_DIR=str(self.state),
        FAKE_PYTHON=str(tmp_path / 'python'),
        TPU_POD_RETRY_S='0',
        TPU_POD_POLL_S='0',
        BYOL_LOG_UPLOAD_S='1',
        TMPDIR=str(tmp_path),
    )
    self.env.pop('BASH_COMPAT', None)

  def git(self, *args):
    subprocess.run(
        ['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args],
        cwd=self.repo,
        check=True,
        capture_output=True,
    )

  def command(self, *args):
    return ['bash', str(self.repo / 'launch' / 'tpu_pod.sh'), *TPU_ARGS, *args]

  def run(self, *args, **env):
    return subprocess.run(
        self.command(*args),
        cwd=self.repo,
        env=dict(self.env, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )

  def _jsonl(self, name):
    path = self.state / name
    return (
        [json.loads(l) for l in path.read_text().splitlines()]
        if path.exists()
        else []
    )

  def calls(self):
    """Each gcloud call but the workers' log uploads, shortened to its verb,
    its resource and (ssh) the worker script's subcommand."""
    out = []
    for argv in self._jsonl('calls.jsonl'):
      if argv[0] == 'storage':
        continue
      call = ' '.join(argv[2:5])
      command = [a for a in argv if a.startswith('--command=')]
      if command:
        words = command[0][len('--command=') :].split()
        call += ' ' + (
            words[words.index('bash') + 2] if 'bash' in words else words[0]
        )
      out.append(call)
    return out

  def uploads(self):
    return [
        argv[-1]
        for argv in self._jsonl('calls.jsonl')
        if argv[:2] == ['storage', 'cp']
    ]

  def mains(self):
    return self._jsonl('main.jsonl')

  def uv(self):
    return self._jsonl('uv.jsonl')

  def exists(self, name='byol-v3-32'):
    return (self.state / f'tpu-{name}').exists()


@pytest.fixture
def pod(tmp_path):
  return Pod(tmp_path)


_CYCLE = [
    'tpu-vm describe byol-v3-32',
    'tpu-vm create byol-v3-32',
    'tpu-vm scp /',
    'tpu-vm ssh byol-v3-32 install',
    'tpu-vm ssh byol-v3-32 start',
    'tpu-vm ssh byol-v3-32 wait',
    'tpu-vm ssh byol-v3-32 status',
    'tpu-vm delete byol-v3-32',
]


def _cycle(calls):
  return [
      c if not c.startswith('tpu-vm scp /') else 'tpu-vm scp /' for c in calls
  ]


def test_tpu_pod_create_copy_install_run_delete(pod):
  proc = pod.run(
      '--config=experiments/gn_ws.py',
      '--data-dir=gs://byol-runs/tensorflow_datasets',
      '--',
      '--config.training.max_steps=10',
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert _cycle(pod.calls()) == _CYCLE
  assert not pod.exists()  # deleted once the run ended
  # Every worker got the checkout, Python 3.11 through uv and the pins ...
  uv = pod.uv()
  assert sorted(c['worker'] for c in uv) == ['0', '0', '1', '1']
  for call in uv:
    home = call['home']
    assert call['argv'] in (
        ['venv', '--python', '3.11', f'{home}/venv'],
        [
            'pip',
            'install',
            '--python',
            f'{home}/venv/bin/python',
            '-c',
            f'{home}/byol_jax/constraints.txt',
            '-e',
            f'{home}/byol_jax',
            f'jax[tpu]=={PINNED_JAX}',
        ],
    )
    assert (pathlib.Path(home) / 'byol_jax/launch/tpu_worker.sh').exists()
  # ... and ran the same main command, in the checkout, detached.
  mains = pod.mains()
  assert sorted(m['worker'] for m in mains) == ['0', '1']
  for m in mains:
    assert m['cwd'] == f'{m["home"]}/byol_jax'
    assert m['argv'] == [
        '-m',
        'byol_jax.main',
        '--config=experiments/gn_ws.py',
        '--workdir=gs://byol-runs/gn_ws',
        *REQUIRE,
        '--config.data.data_dir=gs://byol-runs/' 'tensorflow_datasets',
        '--config.training.max_steps=10',
    ]
  # The workers' logs went to the bucket; worker 0's was shown here.
  assert {
      'gs://byol-runs/gn_ws/logs/worker-0.log',
      'gs://byol-runs/gn_ws/logs/worker-1.log',
  } <= set(pod.uploads())
  log0 = (pod.state / 'gs/byol-runs/gn_ws/logs/worker-0.log').read_text()
  assert 'step 1 of 10, loss 0.5' in log0 and 'exit status 0' in log0
  assert 'step 1 of 10, loss 0.5' in proc.stdout
  assert 'byol-run worker=1 state=done rc=0' in proc.stdout
  assert '# run ended (exit status 0)' in proc.stdout


def test_tpu_pod_keep_then_rerun_reuses_the_slice(pod):
  first = pod.run('--keep')
  assert first.returncode == 0, first.stdout + first.stderr
  assert _cycle(pod.calls()) == _CYCLE[:-1]  # no delete
  assert pod.exists()
  assert '--keep: the TPU VMs stay up' in first.stdout
  second = pod.run('--keep')
  assert second.returncode == 0, second.stdout + second.stderr
  assert 'ALREADY_EXISTS' not in second.stderr
  assert _cycle(pod.calls()[7:]) == [
      'tpu-vm describe byol-v3-32',
      'tpu-vm ssh byol-v3-32 status',
      'tpu-vm scp /',
      'tpu-vm ssh byol-v3-32 install',
      'tpu-vm ssh byol-v3-32 start',
      'tpu-vm ssh byol-v3-32 wait',
      'tpu-vm ssh byol-v3-32 status',
  ]
  assert '# TPU VMs byol-v3-32 exist (READY): reusing them' in second.stdout
  assert len(pod.mains()) == 4  # ran again on both workers (resumes)
  # The venv with Python 3.11 is kept; pip brings it to the pins again.
  assert [c['argv'][0] for c in pod.uv()].count('venv') == 2


def test_tpu_pod_uncommitted_or_untracked_config_stops_here(pod):
  (pod.repo / 'experiments' / 'mine.py').write_text('# new\n')
  proc = pod.run('--config=experiments/mine.py:tiny')
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [
      'tpu_pod.sh: --config=experiments/mine.py:tiny: experiments/mine.py is '
      'not tracked by git, so it would not reach the workers (git add '
      'experiments/mine.py && git commit)'
  ]
  pod.git('add', 'experiments/mine.py')
  proc = pod.run('--config=experiments/mine.py')
  assert proc.returncode == 2
  assert (
      'experiments/mine.py has uncommitted changes; commit them first'
      in proc.stderr
  )
  pod.git('commit', '-qm', 'mine')
  with open(pod.repo / 'experiments' / 'gn_ws.py', 'a') as f:
    f.write('# edited\n')
  proc = pod.run('--config=experiments/gn_ws.py')
  assert proc.returncode == 2 and 'uncommitted changes' in proc.stderr
  assert pod.calls() == [] and proc.stdout == ''


@pytest.mark.parametrize('step', ['install', 'start'])
def test_tpu_pod_failure_in_the_middle_deletes_the_slice(pod, step):
  proc = pod.run(FAKE_GCLOUD_FAIL=f'tpu_worker.sh {step}')
  assert proc.returncode == 1, proc.stdout + proc.stderr
  upto = _CYCLE.index(f'tpu-vm ssh byol-v3-32 {step}')
  assert _cycle(pod.calls()) == _CYCLE[: upto + 1] + [
      'tpu-vm delete ' 'byol-v3-32'
  ]
  assert not pod.exists() and pod.mains() == []


def test_tpu_pod_failed_run_is_reported_and_deleted(pod):
  proc = pod.run(FAKE_MAIN_RC='2')
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert _cycle(pod.calls()) == _CYCLE
  assert 'byol-run worker=0 state=done rc=2' in proc.stdout
  assert '[worker 1] step 1 of 10, loss 0.5' in proc.stdout  # its log's end
  assert '# run ended (exit status 2)' in proc.stdout


def test_tpu_pod_lost_connection_reconnects_and_deletes_at_the_end(pod):
  proc = pod.run(
      FAKE_MAIN_SLEEP='2',
      FAKE_GCLOUD_DROP='tpu_worker.sh wait*1;tpu_worker.sh status*1',
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert _cycle(pod.calls()) == _CYCLE[:-2] + [
      'tpu-vm ssh byol-v3-32 status',  # dropped
      'tpu-vm describe byol-v3-32',  # still READY: the run goes on
      'tpu-vm ssh byol-v3-32 wait',
      'tpu-vm ssh byol-v3-32 status',
      'tpu-vm delete byol-v3-32',
  ]
  assert 'connection lost; the run goes on; reconnecting' in proc.stdout
  assert len(pod.mains()) == 2  # started once, not restarted


def test_tpu_pod_interrupt_detaches_and_attach_finishes(pod):
  release = pod.repo.parent / 'release_the_run'
  env = dict(pod.env, FAKE_MAIN_UNTIL=str(release))
  # A terminal's Ctrl-C. SIGINT back to its default first: a suite started
  # in the background (`cmd &`, as some CI runners do) ignores it, and bash
  # cannot trap a signal ignored on entry.
  proc = subprocess.Popen(
      pod.command(),
      cwd=pod.repo,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      start_new_session=True,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )
  deadline = time.time() + 60
  while 'tpu-vm ssh byol-v3-32 wait' not in pod.calls():
    assert time.time() < deadline and proc.poll() is None
    time.sleep(0.2)
  time.sleep(0.5)
  os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 130, out + err
  assert 'tpu-vm delete byol-v3-32' not in pod.calls()
  assert pod.exists()
  assert '# The run goes on on the TPU VMs without this terminal' in out
  reattach = [
      l[3:] for l in out.splitlines() if l.startswith('#  ') and '--attach' in l
  ][0]
  # The printed command re-attaches: it follows the run to its end, then
  # deletes the TPU VMs; the run was not started twice.
  release.touch()  # the run may end now
  attach = subprocess.run(
      shlex.split(reattach),
      cwd=pod.repo,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert attach.returncode == 0, attach.stdout + attach.stderr
  calls = pod.calls()
  assert calls[calls.index('tpu-vm describe byol-v3-32', 1) :] == [
      'tpu-vm describe byol-v3-32',
      'tpu-vm ssh byol-v3-32 status',
      'tpu-vm ssh byol-v3-32 wait',
      'tpu-vm ssh byol-v3-32 status',
      'tpu-vm delete byol-v3-32',
  ]
  assert len(pod.mains()) == 2 and not pod.exists()
  assert 'state=done rc=0' in attach.stdout


def test_tpu_pod_queued_resource_waits_for_capacity(pod):
  proc = pod.run('--queued', '--spot', FAKE_GCLOUD_QUEUE_WAITS='2')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert _cycle(pod.calls()) == [
      'queued-resources describe byol-v3-32',  # none yet
      'queued-resources create byol-v3-32',
      'queued-resources describe byol-v3-32',  # WAITING_FOR_RESOURCES
      'queued-resources describe byol-v3-32',  # WAITING_FOR_RESOURCES
      'queued-resources describe byol-v3-32',  # ACTIVE
  ] + _CYCLE[2:-1] + ['queued-resources delete byol-v3-32']
  create = json.loads((pod.state / 'calls.jsonl').read_text().splitlines()[1])
  assert create[4:] == [
      'byol-v3-32',
      '--zone=europe-west4-a',
      '--node-id=byol-v3-32',
      '--accelerator-type=v3-32',
      '--runtime-version=tpu-ubuntu2204-base',
      '--spot',
  ]
  assert 'queued resource byol-v3-32: WAITING_FOR_RESOURCES' in proc.stdout
  assert not pod.exists()


def test_tpu_pod_attach_without_tpu_vms_creates_nothing(pod):
  proc = pod.run('--attach')
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [
      'tpu_pod.sh: --attach: no TPU VMs byol-v3-32 ready in europe-west4-a '
      '(state: none); nothing to attach to'
  ]
  assert pod.calls() == ['tpu-vm describe byol-v3-32'] and not pod.exists()


def test_tpu_pod_rerun_after_preemption_recreates_the_slice(pod):
  (pod.state).mkdir(parents=True, exist_ok=True)
  (pod.state / 'tpu-byol-v3-32').write_text('PREEMPTED')
  proc = pod.run('--spot')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert _cycle(pod.calls()) == _CYCLE[:1] + ['tpu-vm delete byol-v3-32'] + (
      _CYCLE[1:]
  )
  assert 'were preempted: deleting them to create them anew' in proc.stdout
