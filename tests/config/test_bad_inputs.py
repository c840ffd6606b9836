"""Inputs that used to fail deep inside a run (or run uselessly) stop at once.

Each is refused by plan.build's validation in one line naming the field, the
value and the fix, with exit code 2 and no traceback, before anything
compiles: `python -m byol_jax.main ... --dry_run` (which builds the run and
compiles nothing) on one CPU device. What each did before (measured on
byol_bn:tiny / gn_ws:tiny, one device):
  * seed 2**63: OverflowError from jax.random.PRNGKey at initialisation (and
    seeds from 2**32 on silently repeat seed 0's initialisation);
  * width multiplier 0.1: ValueError from the ResNet while tracing the
    initialisation;
  * batch 1: ValueError from losses.collapse_std inside the first step;
  * a GroupNorm head of 16 hidden units over 16 groups: a run whose loss and
    collapse statistic are 0.000 at every step (networks.HEAD_MIN_PER_GROUP);
  * projections of 1 dimension: loss 2.000 at every step.
"""

import pathlib
import subprocess
import sys

import pytest
import xla_env

REPO = pathlib.Path(__file__).resolve().parents[2]

# (name, config and overrides, what the one line must say).
BAD = [
    (
        'seed 2**63',
        ['byol_bn.py:tiny', '--config.seed=9223372036854775808'],
        'seed=9223372036854775808: must be an integer in [0, 2**32)',
    ),
    (
        'seed 2**32',
        ['gn_ws.py:tiny', '--config.seed=4294967296'],
        'seed=4294967296: must be an integer in [0, 2**32)',
    ),
    (
        'seed negative',
        ['gn_ws.py:tiny', '--config.seed=-1'],
        'seed=-1: must be an integer in [0, 2**32)',
    ),
    (
        'fractional width',
        ['byol_bn.py:tiny', '--config.model.width_multiplier=0.1'],
        'model.width_multiplier=0.1 gives 6.4 channels in the stem, '
        'not a whole '
        'number >= 1',
    ),
    (
        'zero-channel width',
        ['byol_bn.py:tiny', '--config.model.width_multiplier=0.001'],
        'model.width_multiplier=0.001 gives 0.064 channels in the stem',
    ),
    (
        'width against GN groups',
        ['gn_ws.py:tiny', '--config.model.width_multiplier=0.125'],
        'model.width_multiplier=0.125 gives 8 channels in the stem, not '
        'divisible by the 16 GroupNorm groups (model.gn_groups=16)',
    ),
    (
        'GN groups against width',
        ['gn_ws.py:tiny', '--config.model.gn_groups=32'],
        'model.width_multiplier=0.25 gives 16 channels in the stem, not '
        'divisible by the 32 GroupNorm groups',
    ),
    (
        'batch 1 BN',
        ['byol_bn.py:tiny,batch=1'],
        'training.global_batch_size=1: gives 1 example(s) per device '
        '(1 host(s) '
        'x 1 device(s)); pre-training needs at least 2 per device',
    ),
    (
        'batch 1 GN',
        ['gn_ws.py:tiny,batch=1'],
        'e.g. --config.training.global_batch_size=2.',
    ),
    (
        'GN projector of 1 unit per group',
        ['gn_ws.py:tiny', '--config.model.projector_hidden_size=16'],
        "model.projector_hidden_size=16 gives the projector's 16 GroupNorm "
        'groups (model.gn_groups=16) 1 unit(s) per group, too few to learn',
    ),
    (
        'GN predictor of 2 units per group',
        ['gn_ws.py:tiny', '--config.model.predictor_hidden_size=32'],
        "model.predictor_hidden_size=32 gives the predictor's 16 GroupNorm "
        'groups (model.gn_groups=16) 2 unit(s) per group',
    ),
    (
        'GN head not divisible',
        ['gn_ws.py:tiny', '--config.model.projector_hidden_size=100'],
        'model.projector_hidden_size=100 is not divisible by the 16 GroupNorm '
        'groups',
    ),
    (
        'LN predictor of 2 units',
        [
            'ablation.py:tiny,predictor=ln',
            '--config.model.predictor_hidden_size=2',
        ],
        (
            "model.predictor_hidden_size=2 gives the predictor's LayerNorm "
            '2 unit(s)'
        ),
    ),
    (
        'projections of 1 dimension',
        ['byol_bn.py:tiny', '--config.model.projector_output_size=1'],
        'model.projector_output_size=1: the losses compare l2-normalised '
        'outputs',
    ),
    (
        'collapse threshold nan',
        ['gn_ws.py:tiny', '--config.logging.collapse_stop_below=nan'],
        'logging.collapse_stop_below=nan: must be a finite number >= 0',
    ),
    (
        'collapse patience 0',
        ['gn_ws.py:tiny', '--config.logging.collapse_stop_after=0'],
        'logging.collapse_stop_after=0: must be a positive integer',
    ),
]

# The edges that are allowed: the largest seed, 2 examples per device, GN
# heads of 4 units per group, BN heads of 16 units (measured: collapse
# statistic 0.86 throughout 30 steps), one channel in a BN stem.
GOOD = [
    [
        'gn_ws.py:tiny,batch=2',
        '--config.seed=4294967295',
        '--config.model.projector_hidden_size=64',
        '--config.model.predictor_hidden_size=64',
    ],
    [
        'byol_bn.py:tiny,batch=2',
        '--config.model.projector_hidden_size=16',
        '--config.model.predictor_hidden_size=16',
        '--config.model.width_multiplier=0.015625',
    ],
]


def _dry_run(args, workdir):
  return subprocess.run(
      [
          sys.executable,
          '-m',
          'byol_jax.main',
          f'--config=experiments/{args[0]}',
          *args[1:],
          f'--workdir={workdir}',
          '--dry_run',
      ],
      cwd=REPO,
      env=xla_env.subprocess_env(1),
      capture_output=True,
      text=True,
      timeout=120,
  )


@pytest.mark.parametrize('name,args,message', BAD, ids=[b[0] for b in BAD])
def test_refused_in_one_line_before_compiling(tmp_path, name, args, message):
  del name
  proc = _dry_run(args, tmp_path / 'run')
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
  assert lines[0].startswith('Config error: ') and message in lines[0], lines
  assert proc.stdout == '' and not (tmp_path / 'run').exists()


@pytest.mark.parametrize('args', GOOD, ids=['gn_ws', 'byol_bn'])
def test_the_edges_are_allowed(tmp_path, args):
  proc = _dry_run(args, tmp_path / 'run')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '"per_device_batch_size": 2' in proc.stdout


@pytest.mark.parametrize('depth,width', [(10, 0.25), (18, 1), (50, 0.5)])
def test_norm_channels_are_the_networks(depth, width):
  """The counts validation checks are the norm layers' own (eval_shape)."""
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from byol_jax.models import resnet  # pylint: disable=g-import-not-at-top

  init = hk.transform_with_state(
      lambda x: resnet.ResNet(depth, width, 'small')(x, True)
  ).init
  params, _ = jax.eval_shape(
      init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))
  )
  seen = {p['scale'].shape[0] for m, p in params.items() if 'norm' in m}
  assert seen == set(resnet.norm_channels(depth, width).values())
