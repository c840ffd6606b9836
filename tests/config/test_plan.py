"""The experiment contract: configs of inputs, the run built once at start-up.

Every expected number below is computed by hand from the rule in
byol_jax/config/plan.py: total steps = floor(epochs x examples / batch) unless
training.total_steps is set; warm-up = floor(warmup_epochs x examples /
batch) unless training.warmup_steps is set, never longer than the run; peak
lr = base lr x batch / 256. ImageNet's train split has 1,281,167 images.
"""

import json
import os
import pathlib
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import numpy as np
from PIL import Image
import pytest

from byol_jax import main as main_lib
from byol_jax.config import configs
from byol_jax.config import plan
from byol_jax.training import resume

REPO = pathlib.Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / 'experiments'
EIGHT = plan.Topology(1, 8)


def parse(config_arg: str, *overrides: str, with_explicit=False):
  """The config exactly as `main --config=... --config.x=y` gets it.

  With with_explicit: (config, dotted names of the overridden fields), what
  main.py passes to plan.build as `explicit`.
  """
  argv = ['main', f'--config={EXPERIMENTS}/{config_arg}', *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
      'config', None, flag_values=fv, lock_config=True, sys_argv=argv
  )
  fv(argv)
  if with_explicit:
    return fv.config, frozenset(config_flags.get_override_values(fv['config']))
  return fv.config


def derived(config_arg: str, *overrides: str, topology=EIGHT):
  d = plan.build(
      parse(config_arg, *overrides), topology=topology, read_data=False
  ).pretrain
  return d.total_steps, d.warmup_steps, d.peak_learning_rate


# (config, option string, overrides, (total steps, warm-up steps, peak lr)).
# Defaults: ImageNet, batch 4096; byol_bn / no_bn / modified_init at 1000
# epochs (preset base lr 0.2); gn_ws base lr 0.24 (paper §3.3); ablation 300
# epochs (preset 0.3); simclr 300 epochs, base lr 0.3 of its own.
PLANS = [
    # 1000 x 1281167 // 4096 = 312784; 10 x ... // 4096 = 3127; 0.2 x 16.
    ('byol_bn.py', '', (), (312784, 3127, 3.2)),
    ('no_bn.py', '', (), (312784, 3127, 3.2)),
    # modified init: 50 warm-up epochs (paper §3.2): 50 x 1281167 // 4096.
    ('modified_init.py', '', (), (312784, 15639, 3.2)),
    ('gn_ws.py', '', (), (312784, 3127, 3.84)),
    ('ablation.py', 'encoder=ln', (), (93835, 3127, 4.8)),
    ('simclr.py', '', (), (93835, 3127, 4.8)),
    # epochs=100 as an option: 100 x 1281167 // 4096 = 31278, and the
    # 100-epoch preset's base lr 0.45 (x 16 = 7.2) where the variant has none.
    ('byol_bn.py', 'epochs=100', (), (31278, 3127, 7.2)),
    ('gn_ws.py', 'epochs=100', (), (31278, 3127, 3.84)),
    ('simclr.py', 'epochs=100', (), (31278, 3127, 4.8)),
    ('modified_init.py', 'epochs=100', (), (31278, 15639, 7.2)),
    # ... and as an override: the length changes, the presets do not.
    (
        'byol_bn.py',
        '',
        ('--config.training.num_epochs=100',),
        (31278, 3127, 3.2),
    ),
    (
        'gn_ws.py',
        '',
        ('--config.training.num_epochs=100',),
        (31278, 3127, 3.84),
    ),
    (
        'ablation.py',
        'encoder=none',
        ('--config.training.num_epochs=100',),
        (31278, 3127, 4.8),
    ),
    # Batch 1024: 1000 x 1281167 // 1024 = 1251139, warm-up 12511; lr x 4.
    ('byol_bn.py', 'batch=1024', (), (1251139, 12511, 0.8)),
    (
        'gn_ws.py',
        '',
        ('--config.training.global_batch_size=1024',),
        (1251139, 12511, 0.96),
    ),
    # The issue's example: both overrides take effect.
    (
        'gn_ws.py',
        '',
        (
            '--config.training.num_epochs=100',
            '--config.training.global_batch_size=1024',
        ),
        (125113, 12511, 0.96),
    ),
    ('no_bn.py', 'batch=1024,epochs=300', (), (375341, 12511, 1.2)),
    # Explicit steps win over epochs (as an option or an override).
    ('gn_ws.py', 'steps=5000', (), (5000, 3127, 3.84)),
    (
        'simclr.py',
        '',
        ('--config.training.total_steps=5000',),
        (5000, 3127, 4.8),
    ),
    ('byol_bn.py', 'steps=5000,epochs=100', (), (5000, 3127, 7.2)),
    # A run shorter than its warm-up shortens the warm-up.
    ('modified_init.py', 'steps=1000', (), (1000, 1000, 3.2)),
    # Tiny (digits, 1500 images, batch 256, an explicit 150 steps, one
    # warm-up step per warm-up epoch). epochs= replaces the preset's steps:
    # 30 x 1500 // 256 = 175; an override of num_epochs does not.
    ('quickstart.py', '', (), (150, 10, 0.24)),
    ('quickstart.py', 'epochs=30', (), (175, 10, 0.24)),
    (
        'quickstart.py',
        '',
        ('--config.training.num_epochs=30',),
        (150, 10, 0.24),
    ),
    ('gn_ws.py', 'tiny,batch=128', (), (150, 10, 0.12)),
    ('gn_ws.py', 'tiny,steps=8', (), (8, 8, 0.24)),
    ('modified_init.py', 'tiny', (), (150, 50, 0.2)),
]


@pytest.mark.parametrize('name,options,overrides,expected', PLANS)
def test_plan_table(name, options, overrides, expected):
  arg = f'{name}:{options}' if options else name
  total, warmup, peak = derived(arg, *overrides)
  assert (total, warmup) == expected[:2]
  assert peak == pytest.approx(expected[2], rel=1e-12)


def test_every_pretraining_experiment_is_in_the_table():
  names = {p.name for p in EXPERIMENTS.glob('*.py')} - {'linear_eval.py'}
  assert names == {name for name, *_ in PLANS}


def test_get_config_derives_nothing():
  for path in EXPERIMENTS.glob('*.py'):
    config = parse(path.name)
    assert 'derived' not in config, path.name
    if path.name not in ('quickstart.py', 'linear_eval.py'):
      assert config.training.total_steps == -1, path.name
      assert config.training.warmup_steps == -1, path.name


def test_derived_section_values():
  run = plan.build(
      parse('gn_ws.py', '--config.training.max_steps=100'),
      topology=plan.Topology(2, 4),
      read_data=False,
  )
  config, d, p = run.config, run.pretrain, run.probe
  assert run.mode == 'pretrain' and not run.data.read
  assert (d.num_train_examples, d.num_classes) == (1_281_167, 1000)
  assert (d.per_host_batch_size, d.per_device_batch_size) == (2048, 512)
  assert d.stop_step == 100 and d.total_steps_from == 'training.num_epochs'
  # ImageNet protocol splits (official byol/utils/dataset.py).
  assert run.data.splits == {
      'pretrain': 'train',
      'linear_train': 'train[10000:]',
      'test': 'validation',
  }
  # The probe: 80 epochs x (1271167 // 1024) steps; the grid of base rates
  # (0.4, 0.3, 0.2, 0.1, 0.05) x 1024 / 256, chosen on train[:10000] with the
  # probes trained on train[10000:] (all 1241 batches per epoch).
  assert p.num_train_examples == 1_271_167
  assert p.steps == 80 * 1241
  assert p.peak_learning_rates == (1.6, 1.2, 0.8, 0.4, 0.2)
  assert (p.sweep_valid_split, p.sweep_valid_examples, p.sweep_steps) == (
      'linear_valid',
      10_000,
      80 * 1241,
  )
  # config.json's `derived` record holds the same numbers, flat.
  record = run.record()['derived']
  assert (record['total_steps'], record['eval_steps']) == (
      d.total_steps,
      p.steps,
  )
  assert 'derived' not in config
  assert config.training.total_steps == -1  # inputs are kept as given


def _folder(root: pathlib.Path, sizes: dict, classes: int = 10) -> pathlib.Path:
  """sizes[split] tiny PNGs per split, in class folders."""
  pixel = Image.new('RGB', (2, 2), (120, 30, 200))
  for split, n in sizes.items():
    for i in range(n):
      d = root / split / f'c{i % classes}'
      d.mkdir(parents=True, exist_ok=True)
      pixel.save(d / f'{i:05d}.png')
  return root


def test_folder_and_known_size_sources_give_the_same_plan(tmp_path):
  """5,000 images: tfds:stl10's train split size, and the digits' 1,500."""
  stl = _folder(tmp_path / 'stl', {'train': 5000, 'test': 20})
  opts = (
      '--config.training.num_epochs=100',
      '--config.training.global_batch_size=512',
  )
  keys = (
      'num_train_examples',
      'num_classes',
      'total_steps',
      'warmup_steps',
      'peak_learning_rate',
      'per_device_batch_size',
  )

  def plan_of(source, read_data):
    config = parse(f'gn_ws.py:dataset={source}', *opts)
    d = plan.build(config, topology=EIGHT, read_data=read_data).pretrain
    return {k: getattr(d, k) for k in keys}

  tfds_plan = plan_of('tfds:stl10', False)
  # 100 x 5000 // 512 = 976 steps, 10 x 5000 // 512 = 97 warm-up.
  assert (tfds_plan['total_steps'], tfds_plan['warmup_steps']) == (976, 97)
  assert plan_of(f'folder:{stl}', False) == tfds_plan  # a listing
  assert plan_of(f'folder:{stl}', True) == tfds_plan  # files checked
  # A folder of the digits' size (1500 train images) plans like 'digits'.
  digits = _folder(tmp_path / 'digits', {'train': 1500, 'test': 20})
  config = parse('gn_ws.py:tiny,epochs=30')
  a = plan.build(config, topology=EIGHT).pretrain
  with config.unlocked():
    config.data.source = f'folder:{digits}'
  b = plan.build(config, topology=EIGHT).pretrain
  assert {k: getattr(a, k) for k in keys} == {k: getattr(b, k) for k in keys}
  assert (a.num_train_examples, a.total_steps, a.warmup_steps) == (
      1500,
      175,
      10,
  )


def test_held_out_examples_carve_the_test_split(tmp_path):
  root = _folder(tmp_path / 'f', {'train': 200})
  config = parse(
      f'gn_ws.py:tiny,dataset=folder:{root}',
      '--config.data.held_out_examples=50',
  )
  run = plan.build(config, topology=EIGHT)
  assert run.pretrain.num_train_examples == 150
  assert run.data.splits == {
      'pretrain': 'train',
      'linear_train': 'train',
      'test': 'held_out',
  }


# ----------------------------------------------------------- the command line
def _main(*args, timeout=120, cwd=REPO, **env):
  env = dict(os.environ, PYTHONUNBUFFERED='1', **env)
  return subprocess.run(
      [sys.executable, '-m', 'byol_jax.main', *args],
      cwd=cwd,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def test_dry_run_prints_the_hand_computed_plan_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  proc = _main(
      f'--config={EXPERIMENTS}/gn_ws.py',
      f'--workdir={workdir}',
      '--dry_run',
      cwd=tmp_path,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  config = json.loads(proc.stdout)
  d = config['derived']
  # 8 fake CPU devices (tests/conftest.py sets XLA_FLAGS for children too).
  assert (d['total_steps'], d['warmup_steps']) == (312784, 3127)
  assert d['peak_learning_rate'] == pytest.approx(0.24 * 4096 / 256)
  assert (d['per_host_batch_size'], d['per_device_batch_size']) == (4096, 512)
  assert d['num_train_examples'] == 1_281_167 and d['num_classes'] == 1000
  assert d['data_read'] is False
  assert config['training']['base_learning_rate'] == 0.24
  assert config['model']['encoder_norm'] == 'gn'
  assert not workdir.exists() and list(tmp_path.iterdir()) == []


def test_linear_eval_by_flag_on_a_tiny_run(tmp_path):
  pre = tmp_path / 'pre'
  config = configs.experiment_config('tiny,batch=64,steps=2')
  config.eval.after_pretraining = False
  config.logging.knn_every_steps = 0
  main_lib.run(config, str(pre))
  out = tmp_path / 'eval'
  proc = _main(
      f'--config={EXPERIMENTS}/linear_eval.py',
      f'--config.eval.pretrain_workdir={pre}',
      f'--workdir={out}',
      '--config.eval.num_epochs=2',
      '--config.eval.augment=false',
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((out / 'eval_results.json').read_text())
  assert results['checkpoint_step'] == 2
  assert results['pretrain_workdir'] == str(pre)
  # The run's data (digits: 1500 train, 297 test), not linear_eval.py's
  # ImageNet default; 2 epochs of 1500 // 1024 = 1 step.
  assert (results['num_train'], results['num_test']) == (1500, 297)
  assert results['steps'] == 2
  assert 0.0 <= results['top1'] <= results['top5'] <= 1.0


def _fake_run(root: pathlib.Path, checkpoint_step: int) -> pathlib.Path:
  """A pre-training workdir as plan.build sees it: config.json (a 4-class
  folder at 24 px, 6 steps) and a finished checkpoint directory."""
  data = _folder(root / 'data', {'train': 40, 'test': 8}, classes=4)
  config = parse(
      f'gn_ws.py:tiny,steps=6,dataset=folder:{data}',
      '--config.data.image_size=24',
  )
  built = plan.build(config, topology=EIGHT)
  run = root / 'run'
  (run / 'checkpoints' / str(checkpoint_step)).mkdir(parents=True)
  (run / 'config.json').write_text(json.dumps(built.record()))
  return run


def test_linear_eval_takes_the_runs_data_unless_named(tmp_path):
  run = _fake_run(tmp_path, checkpoint_step=6)
  saved = json.loads((run / 'config.json').read_text())

  def build(arg, *overrides):
    config, explicit = parse(
        arg,
        f'--config.eval.pretrain_workdir={run}',
        *overrides,
        with_explicit=True,
    )
    return plan.build(config, topology=EIGHT, explicit=explicit)

  # Any config: its presets' data (gn_ws:tiny's digits) is not "named".
  for arg in ('gn_ws.py:tiny', 'linear_eval.py', 'byol_bn.py'):
    built = build(arg)
    config = built.config
    assert built.mode == 'linear_eval'
    assert config.data.to_dict() == saved['data'], arg
    assert config.model.to_dict() == saved['model'], arg
    assert built.probe.num_classes == 4 and not built.notes
    assert built.probe.pretrain_finished
  # Named: `dataset=` names the source; the run's image size stays.
  built = build('linear_eval.py:dataset=digits')
  assert (built.config.data.source, built.config.data.image_size) == (
      'digits',
      24,
  )
  assert built.notes == (
      f'evaluating on digits at 24px an encoder pre-trained on '
      f'{saved["data"]["source"]} at 24px',
  )
  # ... and an override names a field.
  config = build('gn_ws.py:tiny', '--config.data.image_size=32').config
  assert (config.data.source, config.data.image_size) == (
      saved['data']['source'],
      32,
  )
  # The run owns its model and training: overriding them is an error.
  with pytest.raises(
      plan.ConfigError,
      match=r'model.depth: linear '
      r'evaluation takes model from the pre-training run',
  ):
    build('linear_eval.py', '--config.model.depth=18')


def test_linear_eval_of_an_unfinished_run_says_so(tmp_path):
  run = _fake_run(tmp_path, checkpoint_step=3)
  built = plan.build(
      parse('linear_eval.py', f'--config.eval.pretrain_workdir={run}'),
      topology=EIGHT,
  )
  assert built.probe.checkpoint_step == 3
  assert not built.probe.pretrain_finished
  assert built.notes == (
      'evaluating step 3 of a pre-training run of 6 steps: the run is '
      'unfinished',
  )


def _train_only_folder(tmp_path):
  return _folder(tmp_path / 'train_only', {'train': 40})


# (name, arguments after --config=experiments/, what the one line must say).
BAD_INPUTS = [
    (
        'unknown option',
        ['gn_ws.py:tiny,colour=red'],
        "unknown config option 'colour'",
    ),
    (
        'repeated option',
        ['gn_ws.py:tiny,steps=4,steps=5'],
        "config option 'steps' is given twice",
    ),
    (
        'value on a flag option',
        ['gn_ws.py:tiny,bf16=no'],
        'config option bf16 takes no value',
    ),
    (
        'option without value',
        ['gn_ws.py:tiny,dataset='],
        'config option dataset needs a value',
    ),
    (
        'ablation norm in get_config',
        ['ablation.py:tiny,encoder=bogus'],
        "ablation option encoder='bogus'",
    ),
    (
        'unknown norm kind',
        ['gn_ws.py:tiny', '--config.model.encoder_norm=bn2'],
        "model.encoder_norm='bn2' is not a normalisation kind",
    ),
    (
        'gn_groups 0',
        ['gn_ws.py:tiny', '--config.model.gn_groups=0'],
        'model.gn_groups=0: must be an integer >= 1',
    ),
    (
        'gn_groups negative',
        ['gn_ws.py:tiny', '--config.model.gn_groups=-4'],
        'model.gn_groups=-4: must be an integer >= 1',
    ),
    (
        'gn_groups not dividing',
        ['gn_ws.py:tiny', '--config.model.gn_groups=24'],
        'model.width_multiplier=0.25 gives 16 channels in the stem, not '
        'divisible by the 24 GroupNorm groups (model.gn_groups=24)',
    ),
    (
        'batch 0 option',
        ['gn_ws.py:tiny,batch=0'],
        "config option batch='0' must be a positive integer",
    ),
    (
        'batch 0',
        ['gn_ws.py:tiny', '--config.training.global_batch_size=0'],
        'training.global_batch_size=0: must be a positive multiple of the 8 '
        'devices (1 host(s) x 8 device(s)), e.g. '
        '--config.training.global_batch_size=16',
    ),
    (
        'batch negative',
        ['gn_ws.py:tiny', '--config.training.global_batch_size=-8'],
        'training.global_batch_size=-8: must be a positive multiple',
    ),
    (
        'batch not over devices',
        ['gn_ws.py:tiny,batch=60'],
        'e.g. --config.training.global_batch_size=56',
    ),
    (
        'epochs 0 option',
        ['gn_ws.py:epochs=0'],
        "config option epochs='0' must be a positive integer",
    ),
    (
        'epochs 0',
        ['gn_ws.py', '--config.training.num_epochs=0'],
        'training.num_epochs=0: must be a positive integer',
    ),
    (
        'steps -1 option',
        ['gn_ws.py:tiny,steps=-1'],
        "config option steps='-1' must be a positive integer",
    ),
    (
        'infinite lr',
        ['gn_ws.py:tiny', '--config.training.base_learning_rate=inf'],
        'training.base_learning_rate=inf: must be a finite number > 0',
    ),
    (
        'unknown method',
        ['gn_ws.py:tiny', '--config.method=moco'],
        "method='moco': use one of byol, simclr",
    ),
    (
        'bad override type',
        ['gn_ws.py:tiny', '--config.training.num_epochs=x'],
        "flag --config.training.num_epochs=x: not an integer: 'x'",
    ),
    (
        'unknown field',
        ['gn_ws.py:tiny', '--config.trainin.num_epochs=3'],
        "--config.trainin.num_epochs: the config has no field 'trainin'",
    ),
    (
        'misspelt field',
        ['gn_ws.py:tiny', '--config.training.global_batch_sizee=64'],
        "no field 'global_batch_sizee' (did you mean 'global_batch_size'?)",
    ),
    (
        'derived field',
        ['gn_ws.py:tiny', '--config.derived.total_steps=5'],
        'derived values are computed at start-up and cannot be set',
    ),
    ('missing config file', ['nope.py'], 'nope.py'),
    (
        'missing dataset',
        ['gn_ws.py:tiny,dataset=folder:/no/such/dir'],
        "data.source='folder:/no/such/dir'",
    ),
    (
        'bad synthetic side',
        ['gn_ws.py:tiny,dataset=synthetic:0'],
        'the synthetic image side must be a positive integer',
    ),
    (
        'too few classes',
        ['gn_ws.py:tiny', '--config.data.num_classes=3'],
        'data.num_classes=3: digits has 10 classes',
    ),
    (
        'missing eval split',
        ['gn_ws.py:tiny,dataset=folder:{train_only}'],
        "eval.test_split='test' cannot be read",
    ),
    (
        'linear eval without a run',
        ['linear_eval.py'],
        "eval.pretrain_workdir='': set it",
    ),
    (
        'linear eval with an option of the run',
        ['linear_eval.py:pretrain={no_checkpoint},bf16'],
        "unknown config option 'bf16' in",
    ),
    (
        'linear eval of a run without checkpoint',
        ['linear_eval.py:pretrain={no_checkpoint}'],
        'holds no checkpoint',
    ),
]


@pytest.mark.parametrize(
    'name,args,message', BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_is_one_line_exit_2(tmp_path, name, args, message):
  del name
  train_only = _train_only_folder(tmp_path)
  no_checkpoint = tmp_path / 'no_checkpoint'  # config.json, no checkpoint
  no_checkpoint.mkdir()
  run = plan.build(
      configs.experiment_config('tiny'), topology=EIGHT, read_data=False
  )
  (no_checkpoint / 'config.json').write_text(json.dumps(run.record()))
  args = [
      a.format(train_only=train_only, no_checkpoint=no_checkpoint) for a in args
  ]
  workdir = tmp_path / 'run'
  # JAX_LOG_COMPILES logs every compilation: one line means none happened.
  proc = _main(
      f'--config={EXPERIMENTS}/{args[0]}',
      *args[1:],
      f'--workdir={workdir}',
      JAX_LOG_COMPILES='1',
  )
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr[-2000:]  # nothing but the error
  assert lines[0].startswith('Config error: '), lines[0]
  assert message in lines[0], lines[0]
  assert 'Traceback' not in proc.stderr
  assert not list(workdir.glob('checkpoints/*'))
  assert not (workdir / 'config.json').exists()


BAD_CONFIG_FILES = [
    ('syntax', 'x = →\n', 'SyntaxError: invalid character'),
    ('import', 'import no_such_module\n', "No module named 'no_such_module'"),
    ('no get_config', 'x = 1\n', 'no get_config()'),
    ('not a ConfigDict', 'def get_config():\n  return 5\n', 'gave 5'),
]


@pytest.mark.parametrize(
    'text,message',
    [b[1:] for b in BAD_CONFIG_FILES],
    ids=[b[0] for b in BAD_CONFIG_FILES],
)
def test_a_bad_config_file_is_one_line_exit_2(tmp_path, text, message):
  (tmp_path / 'bad.py').write_text(text)
  proc = _main(f'--config={tmp_path}/bad.py', '--dry_run', timeout=60)
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  (line,) = [l for l in proc.stderr.splitlines() if l.strip()]
  assert line.startswith(f'Config error: --config={tmp_path}/bad.py: '), line
  assert message in line, line


# ----------------------------------------------------------------- resume
def _quick(**overrides):
  config = parse('gn_ws.py:tiny,batch=64,steps=2')
  config.logging.update(dict(knn_every_steps=0, every_steps=1))
  config.eval.update(dict(num_epochs=1, augment=False))
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def _snapshot(workdir: pathlib.Path) -> dict:
  return {
      str(p.relative_to(workdir)): (p.stat().st_mtime_ns, p.read_bytes())
      for p in sorted(workdir.rglob('*'))
      if p.is_file()
  }


def test_resume_contract(tmp_path):
  workdir = tmp_path / 'run'
  first = main_lib.run(_quick(), str(workdir))
  assert first['step'] == 2 and 'eval' in first
  history = (workdir / 'config_history.jsonl').read_text().splitlines()
  assert len(history) == 1 and json.loads(history[0])['start_step'] == 0
  before = _snapshot(workdir)

  # An unchanged rerun of a finished run resumes and does nothing.
  again = main_lib.run(_quick(), str(workdir))
  assert again['step'] == 2 and again['eval'] == first['eval']
  assert _snapshot(workdir) == before

  # A changed trajectory is refused, naming each field, touching nothing.
  changed = _quick(
      **{'training.global_batch_size': 32, 'training.total_steps': 4}
  )
  with pytest.raises(plan.ConfigError) as e:
    main_lib.run(changed, str(workdir))
  message = str(e.value)
  assert 'holds step 2 of a run trained under another config' in message
  assert 'training.global_batch_size 64 -> 32' in message
  assert 'derived.total_steps 2 -> 4' in message
  assert 'allow_changed_config' in message and '\n' not in message
  assert _snapshot(workdir) == before

  # Non-trajectory changes (logging, stopping early) resume freely.
  main_lib.run(_quick(**{'logging.every_steps': 2}), str(workdir))
  before = _snapshot(workdir)
  # Another network cannot resume, even when changes are allowed.
  with pytest.raises(
      plan.ConfigError,
      match=r'run with another network: ' r"model.encoder_norm 'gn' -> 'bn'",
  ):
    main_lib.run(
        _quick(
            **{
                'model.encoder_norm': 'bn',
                'checkpoint.allow_changed_config': True,
            }
        ),
        str(workdir),
    )
  assert _snapshot(workdir) == before

  # Allowed: the run is extended from step 2 to 4, and the history says so.
  # Allowed, stopped early by max_steps: not finished, so no
  # pretrain_done.json update and no evaluation of step 3.
  extended = _quick(
      **{
          'training.total_steps': 4,
          'training.max_steps': 3,
          'checkpoint.allow_changed_config': True,
      }
  )
  summary = main_lib.run(extended, str(workdir))
  assert summary['step'] == 3 and 'eval' not in summary
  assert json.loads((workdir / 'pretrain_done.json').read_text())['step'] == 2
  extended = _quick(
      **{'training.total_steps': 4, 'checkpoint.allow_changed_config': True}
  )
  summary = main_lib.run(extended, str(workdir))
  assert summary['step'] == 4
  assert json.loads((workdir / 'pretrain_done.json').read_text())['step'] == 4
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['derived']['total_steps'] == 4
  entries = [
      json.loads(l)
      for l in (workdir / 'config_history.jsonl').read_text().splitlines()
  ]
  assert [e['start_step'] for e in entries] == [0, 2, 2, 3]
  # (The tiny preset's 10 warm-up steps were shortened to the run.)
  assert entries[2]['trajectory_changes'] == {
      'derived.total_steps': [2, 4],
      'derived.warmup_steps': [2, 4],
  }
  assert entries[2]['config_changes']['derived.total_steps'] == [2, 4]
  assert entries[3]['trajectory_changes'] == {}
  assert entries[3]['config_changes'] == {
      'training.max_steps': [3, -1],
      'derived.stop_step': [3, 4],
  }
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').open()]
  assert [r['step'] for r in rows] == [1, 2, 3, 4]
  results = json.loads((workdir / 'eval_results.json').read_text())
  assert results['checkpoint_step'] == 4  # re-evaluated after extending


def test_the_cli_refuses_a_changed_resume_in_one_line(tmp_path):
  workdir = tmp_path / 'run'
  main_lib.run(_quick(**{'eval.after_pretraining': False}), str(workdir))
  before = _snapshot(workdir)
  proc = _main(
      f'--config={EXPERIMENTS}/gn_ws.py:tiny,batch=64,steps=3',
      f'--workdir={workdir}',
      '--config.eval.after_pretraining=false',
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  line = [l for l in proc.stderr.splitlines() if l.startswith('Config error')]
  assert len(line) == 1 and 'derived.total_steps 2 -> 3' in line[0]
  assert 'Traceback' not in proc.stderr
  assert _snapshot(workdir) == before


def test_trajectory_ignores_what_does_not_shape_training():
  base = plan.build(parse('gn_ws.py:tiny'), topology=EIGHT)
  t = resume.trajectory(base)
  assert t['training.global_batch_size'] == 256
  assert t['derived.total_steps'] == 150
  for field in (
      'training.max_steps',
      'checkpoint.every_steps',
      'eval.num_epochs',
      'logging.every_steps',
      'data.data_dir',
  ):
    assert field not in t
  other = plan.build(
      parse(
          'gn_ws.py:tiny',
          '--config.training.max_steps=5',
          '--config.eval.num_epochs=3',
      ),
      topology=EIGHT,
  )
  assert resume.trajectory(other) == t
  lr = plan.build(
      parse('gn_ws.py:tiny', '--config.training.base_learning_rate=0.3'),
      topology=EIGHT,
  )
  assert resume.changes(t, resume.trajectory(lr)) == {
      'training.base_learning_rate': (0.24, 0.3)
  }
  assert np.isclose(lr.pretrain.peak_learning_rate, 0.3)


class _Recorded:
  """Checkpoints whose newest step (7) recorded `extra`."""

  directory = '/ckpts'

  def __init__(self, extra):
    self.extra = extra

  def latest_extra(self):
    return 7, self.extra


def test_resume_refuses_checkpoints_of_older_versions():
  """No trajectory recorded, or one from before data.cache_side /
  derived.data_path / training.accumulation_steps: never a silent resume."""
  run = plan.build(parse('gn_ws.py'), topology=EIGHT, read_data=False)
  new = resume.trajectory(run)
  assert resume.check_resume(run, _Recorded({'trajectory': new})) == {}
  with pytest.raises(
      plan.ConfigError,
      match=r'^/ckpts holds step 7 of a run from an older version, recording '
      r'no config: use a fresh --workdir, or resume it with the version',
  ):
    resume.check_resume(run, _Recorded({'wall_time_s': 1.0}))
  added = (
      'data.cache_side',
      'derived.data_path',
      'training.accumulation_steps',
  )
  old = {k: v for k, v in new.items() if k not in added}
  with pytest.raises(plan.ConfigError) as e:
    resume.check_resume(run, _Recorded({'trajectory': old}))
  assert 'holds step 7 of a run trained under another config' in str(e.value)
  assert "data.cache_side None -> 0, derived.data_path None -> 'streaming'" in (
      str(e.value)
  )
