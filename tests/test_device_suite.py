"""benchmarks/device_suite.py: the smoke run end to end, and the planner.

The smoke run is the whole suite at tiny sizes on the CPU, in a subprocess
as the device command runs it: every section must come back with numbers
(the PyTorch one with "torch not installed" where torch is absent).
"""

import json
import math
import subprocess
import sys
import time

import pytest
import xla_env  # tests/xla_env.py

from benchmarks import device_suite
from benchmarks import torch_reference

REPO = device_suite._results.REPO


def _number(value):
  return isinstance(value, (int, float)) and math.isfinite(value)


def test_smoke_run_has_every_section_with_numbers(tmp_path):
  # One CPU device (conftest's 8 fake devices would only slow the compiles).
  env = xla_env.subprocess_env(1, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  start = time.perf_counter()
  proc = subprocess.run(
      # A budget above the smoke default (4 minutes): the run ends when its
      # work is done, and a CPU shared with other test workers compiles the
      # tiny step several times slower (up to a minute per row, measured
      # at load 8 on 2 cores), which the default's time boxes would cut.
      [
          sys.executable,
          '-m',
          'benchmarks.device_suite',
          '--smoke',
          '--budget_minutes=10',
          f'--out={tmp_path}',
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
      check=False,
  )
  seconds = time.perf_counter() - start
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads((tmp_path / device_suite.OUT_JSON).read_text())
  md = (tmp_path / device_suite.OUT_MD).read_text()
  assert result['finished'] and result['smoke']
  assert result['elapsed_s'] <= result['budget_s'] and seconds < 600
  sections = result['sections']
  assert set(sections) == set(device_suite.SECTIONS)

  env_info = result['environment']
  assert sections['environment']['status'] == 'ok'
  assert env_info['platform'] == 'cpu' and env_info['device_count'] >= 1
  assert env_info['jax_version'] and env_info['jaxlib_version']
  assert 'xla_flags' in env_info and env_info['jax_version'] in md

  jax_items = sections['jax_step']['items']
  assert len(jax_items) == 2 * len(device_suite.SMOKE_BATCHES)
  for item in jax_items:
    assert item['status'] == 'ok', item
    row = item['row']
    for key in (
        'images_per_sec',
        'step_time_median_s',
        'compile_time_s',
        'peak_memory_bytes',
        'flops_per_image',
        'tflops_per_sec',
    ):
      assert _number(row[key]) and row[key] > 0, key
    assert row['mfu'] is None and 'CPU' in row['mfu_note']  # no CPU peak
    assert f'{row["images_per_sec"]:.1f}' in md

  (inp,) = sections['input_pipeline']['items']
  assert inp['status'] == 'ok', inp
  # No --data_dir: the synthetic row only, at the smoke's tiny batch.
  (row,) = inp['result']['rows']
  assert row['dataset'] == 'synthetic:224' and row['image_size'] == 224
  assert row['batch'] == 8 and row['device'] == 'cpu: cpu'
  for key in ('images_per_sec', 'crop_only_images_per_sec', 'compile_s'):
    assert _number(row[key]) and row[key] > 0, key
  assert inp['result']['results_file'].startswith('input_pipeline-cpu-')
  assert f'| synthetic:224 | 224 | 8 | {row["images_per_sec"]:.1f} |' in md
  assert 'not measured (no CIFAR-10 row' in md

  torch_items = sections['torch_step']['items']
  if torch_reference.torch_missing_reason():
    assert [i['status'] for i in torch_items] == ['skipped']
    assert torch_items[0]['reason'] == 'torch not installed'
    assert 'torch not installed' in md
  else:
    for item in torch_items:
      assert item['status'] == 'ok', item
      assert _number(item['row']['images_per_sec'])

  (cifar,) = sections['cifar']['items']
  assert cifar['status'] == 'ok', cifar
  r = cifar['result']
  assert r['data_path'] == 'in_memory' and r['stages'] == [
      'data',
      'pretrain',
      'eval',
  ]
  assert r['steps_done'] == r['steps_planned'] == 8
  assert r['stopped_by'] == 'end of schedule'
  assert _number(r['images_per_sec']) and r['images_per_sec'] > 0
  for key in ('knn_top1', 'linear_top1'):
    assert 0.0 <= r[key] <= 1.0
    assert f'{r[key] / 0.01:.2f}%' in md  # as render_markdown writes it
  for title in device_suite.SECTION_TITLES.values():
    assert title in md
  # The child output is kept beside the results.
  assert (tmp_path / device_suite.OUT_LOG).stat().st_size > 0


@pytest.mark.parametrize('minutes', [3, 4, 5, 6, 7, 9, 12, 30])
@pytest.mark.parametrize('smoke', [False, True])
@pytest.mark.parametrize('torch_missing', [None, 'torch not installed'])
def test_plan_fits_the_budget_with_a_margin(minutes, smoke, torch_missing):
  budget = minutes * 60.0
  plan = device_suite.make_plan(
      budget, smoke=smoke, torch_missing=torch_missing
  )
  assert plan.margin_s >= device_suite.MIN_MARGIN_S
  assert plan.margin_s >= device_suite.MARGIN_FRACTION * budget
  assert plan.planned_s + plan.margin_s <= budget
  sections = [i.section for i in plan.items]
  assert sections == sorted(sections, key=device_suite.SECTIONS.index)
  assert sections[0] == 'environment'
  batches = device_suite.SMOKE_BATCHES if smoke else device_suite.GPU_BATCHES
  # Every candidate is either planned or listed as dropped, with a reason.
  assert len(plan.items) + len(plan.dropped) == (
      1 + 2 * len(batches) + 1 + (1 if torch_missing else len(batches)) + 1
  )
  assert all(d['reason'].startswith('not in the budget') for d in plan.dropped)
  # What is dropped is less important than the most important item kept
  # after the environment (the first JAX row).
  first_row = device_suite.PRIORITY[('jax_step', 'bn', 0)]
  assert all(d['priority'] > first_row for d in plan.dropped)


def test_default_gpu_plan_inside_the_command_limit():
  budget = device_suite.DEFAULT_BUDGET_MINUTES * 60.0
  assert budget <= 9 * 60  # the device tool stops a command at 10 minutes
  plan = device_suite.make_plan(budget)
  # Everything but the lowest-priority item: with the input pipeline's 45 s
  # the estimates add up to 555 s, over the 518 s the 9 minutes leave after
  # the margin; PyTorch at batch 256 (70 s) is the one left out.
  assert [d['name'] for d in plan.dropped] == ['torch bn batch 256']
  assert plan.dropped[0]['priority'] == max(device_suite.PRIORITY.values())
  names = [i.name for i in plan.items]
  assert names == [
      'environment',
      'jax bn batch 128',
      'jax bn batch 256',
      'jax gn_ws batch 128',
      'jax gn_ws batch 256',
      'input pipeline',
      'torch bn batch 128',
      'cifar',
  ]
  # A smaller budget keeps the batch-128 rows, the input pipeline and
  # CIFAR, drops batch 256.
  small = device_suite.make_plan(6.5 * 60.0)
  assert [i.name for i in small.items] == [
      'environment',
      'jax bn batch 128',
      'jax gn_ws batch 128',
      'input pipeline',
      'torch bn batch 128',
      'cifar',
  ]
  assert {d['name'] for d in small.dropped} == {
      'jax bn batch 256',
      'jax gn_ws batch 256',
      'torch bn batch 256',
  }
  with pytest.raises(ValueError, match='too small'):
    device_suite.make_plan(20.0)


def test_a_child_past_its_box_is_killed_with_its_children(tmp_path):
  log = tmp_path / 'log'
  code = (
      'import subprocess, sys, time; print("started", flush=True); '
      'subprocess.Popen([sys.executable, "-c", "import time; '
      'time.sleep(60)"]); time.sleep(60)'
  )
  start = time.perf_counter()
  run = device_suite._run_child([sys.executable, '-c', code], 2.0, log)
  assert time.perf_counter() - start < 40  # unkilled: 60 s (the sleeps)
  assert run['timed_out'] and run['returncode'] is None
  assert 'started' in run['tail']


@pytest.mark.parametrize(
    'rate,verdict', [(61234.5, 'met'), (12000.0, 'missed')]
)
def test_input_markdown_compares_the_cifar_row_with_the_target(rate, verdict):
  rows = [
      dict(
          dataset='folder:cifar10_jpg',
          image_size=32,
          batch=512,
          images_per_sec=rate,
          crop_only_images_per_sec=2 * rate,
          compile_s=1.5,
          device='gpu: NVIDIA H200',
      ),
      dict(
          dataset='synthetic:224',
          image_size=224,
          batch=256,
          images_per_sec=9000.0,
          crop_only_images_per_sec=20000.0,
          compile_s=2.0,
          device='gpu: NVIDIA H200',
      ),
  ]
  items = [
      dict(
          name='input pipeline',
          status='ok',
          result=dict(
              rows=rows, batches_timed=20, results_file='input_pipeline-x.json'
          ),
      )
  ]
  md = '\n'.join(device_suite.input_markdown(items))
  assert (
      f'| folder:cifar10_jpg | 32 | 512 | {rate:.1f} | {2 * rate:.1f} | 1.50 |'
      in md
  )
  assert '| synthetic:224 | 224 | 256 | 9000.0 | 20000.0 | 2.00 |' in md
  assert f'**{verdict}**, {rate:,.0f} images/s' in md
  assert 'NVIDIA H200' in md
