"""byol_jax/hosts/distributed.py: the start-up decision, on fake environments
(and hosts/sync.py on one process: fingerprints, local agreement)."""

import numpy as np
import pytest

from byol_jax.hosts import distributed
from byol_jax.hosts import sync

SLURM = {
    'SLURM_JOB_ID': '4242',
    'SLURM_NTASKS': '4',
    'SLURM_PROCID': '3',
    'SLURM_LOCALID': '1',
    'SLURM_NODEID': '1',
    'SLURM_STEP_NODELIST': 'gpu[017-018]',
    'SLURM_STEP_TASKS_PER_NODE': '2(x2)',
}
BYOL = {
    'BYOL_COORDINATOR_ADDRESS': '10.0.0.1:1234',
    'BYOL_NUM_PROCESSES': '2',
    'BYOL_PROCESS_ID': '1',
}


def test_single_process_when_nothing_says_otherwise():
  plan = distributed.process_plan(env={}, on_cloud_tpu=False)
  assert plan == distributed.Plan('none') and not plan.is_multiprocess


def test_flags_come_first():
  plan = distributed.process_plan(
      coordinator_address='h0:99',
      num_processes=3,
      process_id=2,
      env={**BYOL, **SLURM},
      on_cloud_tpu=True,
  )
  assert plan == distributed.Plan('flags', 'h0:99', 3, 2)
  assert 'process 2 of 3, coordinator h0:99' in plan.describe()


def test_environment_before_slurm_and_tpu():
  plan = distributed.process_plan(env={**BYOL, **SLURM}, on_cloud_tpu=True)
  assert plan == distributed.Plan('env', '10.0.0.1:1234', 2, 1)


def test_slurm_first_node_and_jax_port_for_the_job():
  plan = distributed.process_plan(env=SLURM)
  # JAX's SLURM port: job id folded into the top 4096 ports.
  assert plan == distributed.Plan(
      'slurm', f'gpu017:{4242 % 4096 + 61440}', 4, 3, (1,)
  )
  # One task per node: it keeps all the node's GPUs.
  one_per_node = dict(
      SLURM, SLURM_STEP_TASKS_PER_NODE='1(x4)', SLURM_NODEID='3'
  )
  assert distributed.process_plan(env=one_per_node).local_device_ids is None
  # JAX_COORDINATOR_ADDRESS and BYOL_COORDINATOR_PORT override the guess.
  assert (
      distributed.process_plan(
          env=dict(SLURM, JAX_COORDINATOR_ADDRESS='head:7')
      ).coordinator_address
      == 'head:7'
  )
  assert distributed.process_plan(
      env=dict(SLURM, BYOL_COORDINATOR_PORT='5555')
  ).coordinator_address == ('gpu017:5555')
  # A one-task job is a single process.
  assert (
      distributed.process_plan(
          env=dict(SLURM, SLURM_NTASKS='1', SLURM_PROCID='0')
      ).source
      == 'none'
  )


@pytest.mark.parametrize(
    'nodelist,first',
    [
        ('node001', 'node001'),
        ('node001,gpu2', 'node001'),
        ('node[003-005,009],gpu2', 'node003'),
        ('a[7,9]', 'a7'),
        ('gpu-[10-12]', 'gpu-10'),
    ],
)
def test_first_slurm_host(nodelist, first):
  assert distributed.first_slurm_host(nodelist) == first


def test_cloud_tpu_lets_jax_read_the_metadata():
  plan = distributed.process_plan(env={}, on_cloud_tpu=True)
  assert plan == distributed.Plan('tpu')
  assert (
      distributed.process_plan(mode='off', env=SLURM, on_cloud_tpu=True).source
      == 'none'
  )


@pytest.mark.parametrize(
    'kwargs,env,message',
    [
        (
            dict(coordinator_address='h:1'),
            {},
            '--coordinator_address set but --num_processes, --process_id not',
        ),
        (
            dict(num_processes=2, process_id=0),
            {},
            '--num_processes, --process_id set but --coordinator_address not',
        ),
        (
            dict(coordinator_address='h:1', num_processes=2, process_id=2),
            {},
            '--process_id=2 is out of range for --num_processes=2; use 0..1',
        ),
        (
            dict(coordinator_address='h:1', num_processes=0, process_id=0),
            {},
            '--num_processes=0 must be >= 1',
        ),
        (
            dict(coordinator_address='h', num_processes=2, process_id=0),
            {},
            "--coordinator_address='h' must be host:port",
        ),
        (
            {},
            {'BYOL_NUM_PROCESSES': '2'},
            'BYOL_NUM_PROCESSES set but BYOL_COORDINATOR_ADDRESS, '
            'BYOL_PROCESS_ID '
            'not',
        ),
        (
            {},
            dict(BYOL, BYOL_PROCESS_ID='one'),
            "BYOL_PROCESS_ID='one' must be an integer",
        ),
        (
            {},
            {'JAX_COORDINATOR_ADDRESS': 'h:1'},
            (
                'JAX_COORDINATOR_ADDRESS=h:1 is set but nothing gives the '
                'process count'
            ),
        ),
        (
            {},
            dict(SLURM, SLURM_PROCID='4'),
            'SLURM_PROCID=4 is out of range for SLURM_NTASKS=4',
        ),
        (
            dict(
                mode='off',
                coordinator_address='h:1',
                num_processes=2,
                process_id=0,
            ),
            {},
            '--distributed=off contradicts',
        ),
    ],
)
def test_bad_settings_name_the_field(kwargs, env, message):
  with pytest.raises(distributed.DistributedConfigError) as e:
    distributed.process_plan(env=env, **kwargs)
  assert message in str(e.value)
  assert '\n' not in str(e.value)


def test_initialize_calls_jax_with_the_plan_and_gloo():
  calls, config = [], {}
  record = lambda **kw: calls.append(kw)
  assert not distributed.initialize(
      distributed.Plan('none'),
      initialize_fn=record,
      config_update=config.__setitem__,
  )
  assert calls == [] and config == {}
  plan = distributed.process_plan(env=SLURM)
  assert distributed.initialize(
      plan, initialize_fn=record, config_update=config.__setitem__
  )
  assert config == {'jax_cpu_collectives_implementation': 'gloo'}
  assert calls == [
      dict(
          coordinator_address=plan.coordinator_address,
          num_processes=4,
          process_id=3,
          local_device_ids=[1],
          cluster_detection_method='deactivate',
      )
  ]
  calls.clear()
  distributed.initialize(
      distributed.Plan('tpu'),
      initialize_fn=record,
      config_update=config.__setitem__,
  )
  assert calls == [{}]  # jax.distributed.initialize() detects the pod.


def test_fingerprint_is_bitwise():
  tree = {'a': np.arange(4, dtype=np.float32), 'b': [np.ones((2, 2))]}
  same = {'a': np.arange(4, dtype=np.float32), 'b': [np.ones((2, 2))]}
  assert sync.fingerprint(tree) == sync.fingerprint(same)
  bumped = {'a': np.nextafter(tree['a'], np.float32(9)), 'b': tree['b']}
  assert sync.fingerprint(tree) != sync.fingerprint(bumped)
  as_f64 = {'a': tree['a'].astype(np.float64), 'b': tree['b']}
  assert sync.fingerprint(tree) != sync.fingerprint(as_f64)
  words = sync.fingerprint_words(sync.fingerprint(tree))
  assert words.dtype == np.int32 and words.shape == (4,)


def test_single_process_agreement_is_local():
  assert sync._allgather(np.int32(1)).tolist() == [1]  # local: no peers
  sync.check_same_on_all_processes(np.arange(3), 'x')  # no raise
  sync.barrier('nothing to wait for')
