"""The experiment config (inputs only; -1: plan.py derives it), its options
(after the colon of `--config=`; README.md, "Configs and overrides") and the
experiments/<name>.py loader."""

import pathlib
import runpy

import ml_collections
from ml_collections import config_dict

from byol_jax import methods
from byol_jax.config import presets

# The experiment configs of a checkout (not installed with the package).
EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parents[2] / 'experiments'

SCALES = ('tiny', 'small', 'cifar10')
COMMON_OPTIONS = SCALES + ('dataset', 'epochs', 'batch', 'steps', 'bf16')
FLAG_OPTIONS = SCALES + ('bf16',)  # options without a value
INT_OPTIONS = ('epochs', 'batch', 'steps')  # positive integers


def parse_options(arg, allowed) -> dict:
  """'tiny,steps=5,dataset=digits' -> {'tiny': True, 'steps': 5, ...}."""
  options = {}
  for item in filter(None, (arg or '').split(',')):
    name, sep, value = (x.strip() for x in item.partition('='))
    flag, number = name in FLAG_OPTIONS, name in INT_OPTIONS
    if name not in allowed:
      known = ', '.join(sorted(allowed))
      problem = f'unknown config option {name!r} in {arg!r}; known: {known}'
    elif name in options:
      problem = f'config option {name!r} is given twice in {arg!r}'
    elif flag and sep:
      problem = f'config option {name} takes no value: write {name} alone'
    elif not flag and not value:
      problem = f'config option {name} needs a value: {name}=VALUE'
    elif number and not (value.isdecimal() and int(value) > 0):
      problem = f'config option {name}={value!r} must be a positive integer'
    else:
      options[name] = True if flag else int(value) if number else value
      continue
    raise ValueError(problem + '.')
  return options


def model_config(**overrides) -> ml_collections.ConfigDict:
  """ResNet-50 + BYOL heads, BN everywhere (paper Table 2), with `overrides`."""
  model = config_dict.create(
      depth=50,
      width_multiplier=1.0,
      stem='imagenet',
      # Each residual block's last norm scale at init: 1 (False) as the paper's
      # runs, not the zero init the official code ships (its README, "Note on
      # batch normalization"); the modified init sets True: 0 (paper §3.2).
      zero_init_last=False,
      dtype='float32',
      encoder_norm='bn',
      projector_norm='bn',
      predictor_norm='bn',
      gn_groups=16,  # paper §3.3.
      encoder_ws=False,
      heads_ws=False,
      cross_replica_bn=True,  # BN statistics over the global batch (official).
      bn_decay=0.9,  # BN moving-average decay (official bn_config).
      projector_hidden_size=4096,  # BYOL §3.3: MLP 4096 -> 256.
      projector_output_size=256,
      predictor_hidden_size=4096,
  )
  model.update(overrides)
  return model


def experiment_config(
    arg=None,
    *,
    method=methods.BYOL,
    model=None,
    epochs=300,
    training=None,
    options=None,
):
  """Defaults, the variant's model/training, the scale preset, then options."""
  if options is None:
    options = parse_options(arg, COMMON_OPTIONS)
  epochs = options.get('epochs', epochs)
  preset = presets.preset_epochs(epochs)
  model = model_config(**(model or {}))
  config = config_dict.create(
      options=arg or '',  # linear evaluation reads `dataset=` here.
      mode='pretrain',  # or 'linear_eval' (eval.pretrain_workdir).
      seed=0,
      paper_top1=-1.0,  # the paper's ImageNet linear-eval top-1 (-1: none).
      method=method,
      data=dict(
          source='tfds:imagenet2012',
          data_dir='',  # TFDS data_dir ('' for the TFDS default).
          image_size=224,
          pretrain_split='pretrain',
          min_crop_area=0.08,  # random-resized crop area >= 8% (BYOL).
          held_out_examples=0,  # of train, as split 'held_out' (README).
          num_classes=-1,  # -1: the dataset's.
          max_in_memory_mb=4096,  # decoded MiB; larger datasets stream.
          cache_side=0,  # in memory: 0 their own side; N: N x N centre crop.
          cache_dir='',  # '': $XDG_CACHE_HOME/byol_jax/folders or ~/.cache
          in_memory_on='device',  # a copy per local device; or 'host'.
      ),
      model=model,
      training=dict(
          num_epochs=epochs,
          total_steps=-1,  # > 0 wins over num_epochs.
          max_steps=-1,  # stop (with a checkpoint) before total_steps.
          global_batch_size=4096,  # BYOL §3.3 (512 TPU v3 cores).
          # Micro-batches per device batch, one update (README); BN: ghost BN.
          accumulation_steps=1,
          base_learning_rate=presets.LR_PRESETS[preset],  # x batch / 256.
          warmup_epochs=10.0,  # BYOL §3.3; short runs warm up for less.
          warmup_steps=-1,  # >= 0 wins over warmup_epochs.
          weight_decay=presets.WD_PRESETS[preset],
          trust_coefficient=1e-3,  # LARS eta (BYOL §3.3, official).
          predictor_lr_multiplier=1.0,  # paper: 1; presets.apply_tiny: 30.
          base_ema=presets.EMA_PRESETS[preset],  # tau_base (BYOL §3.3).
          temperature=0.1,  # SimCLR's InfoNCE temperature (batch 4096).
          modified_init=False,  # paper §3.2
          modified_init_batch_size=4096,
          modified_init_chunk_size=256,  # per device per calibration pass.
      ),
      checkpoint=dict(
          every_steps=1000,
          every_secs=600,
          max_to_keep=3,
          allow_changed_config=False,  # resume another trajectory (README).
      ),
      logging=dict(
          every_steps=50,
          knn_every_steps=5000,  # kNN monitor on the test split; 0: off.
          knn_max_train_examples=10_000,
          # Stop (checkpoint kept, exit 1) when the collapse statistic stays
          # below this for collapse_stop_after logs; 0 (never): paper collapses.
          collapse_stop_below=presets.collapse_stop_below(method, model),
          collapse_stop_after=5,
      ),
      # Linear evaluation, the paper's protocol (BYOL Appendix C.1).
      eval=dict(
          after_pretraining=True,
          pretrain_workdir='',  # set: evaluate this run's encoder.
          num_epochs=80,
          global_batch_size=1024,
          # Base rates (x batch / 256) chosen on held-out data; one: no sweep.
          learning_rates=(0.4, 0.3, 0.2, 0.1, 0.05),
          # Held out from train to choose the rate without a validation
          # split (ImageNet's: train[:10000], official); -1: a fifth.
          sweep_valid_examples=-1,
          momentum=0.9,
          train_split='linear_train',
          test_split='test',
          augment=True,  # crop + flip per step; False: features once.
          random_baseline=False,  # also evaluate a random encoder.
      ),
  )
  config.training.update(training or {})
  scales = [s for s in SCALES if options.get(s)]
  if len(scales) > 1:
    raise ValueError(
        f'config options {" and ".join(scales)} in {arg!r}: use one scale.'
    )
  if scales:
    getattr(presets, f'apply_{scales[0]}')(config)
  t = config.training
  if 'epochs' in options:  # replaces a scale preset's step count
    t.update(num_epochs=epochs, total_steps=-1)
  t.global_batch_size = options.get('batch', t.global_batch_size)
  t.total_steps = options.get('steps', t.total_steps)
  config.data.source = options.get('dataset', config.data.source)
  config.model.dtype = 'bfloat16' if 'bf16' in options else config.model.dtype
  return config


def load_experiment(
    name: str, arg: str = '', *, experiments_dir=EXPERIMENTS_DIR
) -> ml_collections.ConfigDict:
  """experiments/<name>.py's get_config(arg), as --config=...:<arg> loads it."""
  path = pathlib.Path(experiments_dir) / f'{name}.py'
  if not path.exists():
    raise FileNotFoundError(
        f'{path} not found: run from a checkout of byol_jax (experiments/ is '
        'not installed with the package) or pass --experiments_dir.'
    )
  return runpy.run_path(str(path))['get_config'](arg)
