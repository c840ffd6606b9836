"""reproduce's --override values parse as main's --config.<field> flags do:
a tuple field is a tuple of numbers, not the string's characters, and an
override of a whole section is one line, not a traceback.
"""

import json
import pathlib
import subprocess
import sys

import pytest
import xla_env

from byol_jax.results import variants

REPO = pathlib.Path(__file__).resolve().parents[2]
BN = variants.Variant('bn', 'byol_bn')


def _value(item):
  config = variants.variant_config(
      BN, 'tiny', overrides=variants.parse_overrides([item])
  )
  section, field = item.partition('=')[0].split('.')
  return config[section][field]


@pytest.mark.parametrize(
    'item,value',
    [
        ('eval.learning_rates=0.1,0.2', (0.1, 0.2)),
        ('eval.learning_rates=(0.1, 0.2)', (0.1, 0.2)),
        ('eval.learning_rates=[0.3]', (0.3,)),
        ('eval.learning_rates=0.1', (0.1,)),
        ('eval.random_baseline=true', True),
        ('eval.augment=False', False),
        ('training.total_steps=1_000', 1000),
        ('training.base_ema=0.996', 0.996),
        ('data.source=folder:/data/x', 'folder:/data/x'),
    ],
)
def test_values_parse_as_the_config_flags_do(item, value):
  parsed = _value(item)
  assert parsed == value and type(parsed) is type(value)


def _main_dry_run(flag):
  """The field as `python -m byol_jax.main --dry_run <flag>` builds it."""
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'byol_jax.main',
          '--dry_run',
          '--config=experiments/byol_bn.py:tiny',
          flag,
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
      env=xla_env.subprocess_env(1),
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout)['eval']['learning_rates']


def test_printed_command_means_the_same_to_main(tmp_path):
  overrides = variants.parse_overrides(['eval.learning_rates=(0.1, 0.2)'])
  command = BN.command('tiny', '', tmp_path / 'bn', overrides)
  # The value has a space and parentheses: one shell-quoted word.
  assert command.endswith(" '--config.eval.learning_rates=(0.1, 0.2)'")
  assert _main_dry_run('--config.eval.learning_rates=(0.1, 0.2)') == [0.1, 0.2]
  assert tuple(_value('eval.learning_rates=(0.1, 0.2)')) == (0.1, 0.2)


@pytest.mark.parametrize(
    'args,message',
    [
        (
            ['--override=model=3'],
            '--override model=3: model is a section of the '
            'config, not a field',
        ),
        (
            ['--override=eval.learning_rates=0.1 0.2'],
            "--override eval.learning_rates='0.1 0.2': expected a tuple",
        ),
        (
            ['--override=eval.learning_rates=abc'],
            "eval.learning_rates=('abc',)",
        ),
        (
            ['--override=eval.augment=maybe'],
            "--override eval.augment='maybe': expected true or false",
        ),
        (['--bogus'], "Unknown command line flag 'bogus'"),
        (['extra'], "unexpected arguments ['extra']"),
    ],
)
def test_bad_overrides_and_flags_are_one_line_exit_2(tmp_path, args, message):
  workdir = tmp_path / 'w'
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'byol_jax.reproduce',
          '--table=2',
          '--scale=tiny',
          '--variants=bn',
          f'--workdir={workdir}',
          *args,
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
      env=xla_env.subprocess_env(1),
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(proc.stderr.splitlines()) == 1, proc.stderr
  assert message in proc.stderr and 'Traceback' not in proc.stderr
  assert not workdir.exists()  # refused before anything is written.
