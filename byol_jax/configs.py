"""The experiment config: its schema, the official presets, and options.

Each experiments/<name>.py is a thin `get_config(arg)` that returns
`build(arg, ...)` with its variant: a config of inputs only. `arg` is the
string after the colon in `--config=experiments/<name>.py:<arg>`:
comma-separated options, e.g. `tiny,dataset=digits,epochs=100`. Options
common to every config:

  tiny             a CPU-sized model (ResNet-10 at width 1/4, 16 px images),
                   batch 256 and 150 steps, on the digits by default.
  cifar10          ResNet-18 with the small-image stem at 32 px, batch 512,
                   200 epochs, on tfds:cifar10 by default (one GPU).
  dataset=SOURCE   tfds:<name> | folder:<path> | digits | synthetic[:side].
  epochs=N         pre-training epochs (clears a preset's step count);
                   40/100/300/1000 also select the official BYOL presets of
                   lr, weight decay and tau.
  batch=N          global batch size.
  steps=N          total pre-training steps (wins over epochs).
  bf16             compute in bfloat16 (float32 parameters and statistics).

Nothing is derived here: the step counts, warm-up, batch-scaled learning
rate and dataset size are derived once at start-up by byol_jax/plan.py,
after any `--config.<field>=<value>` overrides, so an override of epochs or
batch always takes effect. -1 in training.total_steps / warmup_steps and in
data.num_classes means "derive it".
"""

import importlib.util
import pathlib

import ml_collections

from byol_jax import methods
from byol_jax import paper

# The experiment configs of a checkout (not installed with the package).
EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parents[1] / 'experiments'

# Official BYOL presets by number of pre-training epochs (byol/configs/byol.py
# of the official code; BYOL paper Appendix C): base learning rate (for batch
# 256, scaled linearly), weight decay and base target decay tau.
LR_PRESETS = {40: 0.45, 100: 0.45, 300: 0.3, 1000: 0.2}
WD_PRESETS = {40: 1e-6, 100: 1e-6, 300: 1e-6, 1000: 1.5e-6}
EMA_PRESETS = {40: 0.97, 100: 0.99, 300: 0.99, 1000: 0.996}

# BYOL with GroupNorm + Weight Standardisation, paper §3.3: "we apply weight
# standardization to convolutional and linear parameters ... and replace all
# BN by GN layers", G = 16; base lr 0.24, weight decay 3e-8, tau_base 0.999.
# WS in every convolution of the encoder and every linear layer of the
# projector and predictor; GN everywhere BN was. No layer uses batch
# statistics. (The online classifier, a monitor on the stop-gradient
# representation that plays no part in BYOL's objective, stays a plain
# linear layer.)
GN_WS_MODEL = dict(encoder_norm='gn', projector_norm='gn', predictor_norm='gn',
                   gn_groups=16, encoder_ws=True, heads_ws=True)
GN_WS_TRAINING = dict(base_learning_rate=0.24, weight_decay=3e-8,
                      base_ema=0.999)
GN_WS_PAPER_TOP1 = paper.TABLE2['gn_ws']

# Paper Table 1: each component's normalisation is one of these ('ln' is the
# paper's LayerNorm: GroupNorm with one group).
TABLE1_NORMS = ('bn', 'ln', 'none')

COMMON_OPTIONS = ('tiny', 'cifar10', 'dataset', 'epochs', 'batch', 'steps',
                  'bf16')
# Options that take no value (all others need one: `name=value`).
FLAG_OPTIONS = ('tiny', 'cifar10', 'bf16')


def parse_options(arg, allowed) -> dict:
  """'tiny,dataset=digits' -> {'tiny': True, 'dataset': 'digits'}.

  Args:
    arg: the config string (None or '' for no options).
    allowed: option names this config accepts.

  Returns:
    A dict of option name -> string value (True for FLAG_OPTIONS).

  Raises:
    ValueError: an unknown or repeated option, a value on a flag option
      (`bf16=no`), or a missing value (`dataset=`).
  """
  options = {}
  for item in filter(None, (arg or '').split(',')):
    name, sep, value = (x.strip() for x in item.partition('='))
    if name not in allowed:
      raise ValueError(
          f'unknown config option {name!r} in {arg!r}; this config accepts: '
          f'{", ".join(sorted(allowed))}.')
    if name in options:
      raise ValueError(f'config option {name!r} is given twice in {arg!r}; '
                       'give it once.')
    if name in FLAG_OPTIONS:
      if sep:
        raise ValueError(f'config option {name} takes no value (got '
                         f'{item.strip()!r}); write {name} to turn it on, '
                         'or leave it out.')
      options[name] = True
    elif not value:
      raise ValueError(f'config option {name} needs a value: {name}=VALUE.')
    else:
      options[name] = value
  return options


def _int_option(options, name):
  """A positive integer option (epochs=, batch=, steps=)."""
  try:
    value = int(options[name])
  except ValueError:
    value = None
  if value is None or value <= 0:
    raise ValueError(f'config option {name}={options[name]!r} must be a '
                     'positive integer.')
  return value


def model_config(**overrides) -> ml_collections.ConfigDict:
  """ResNet-50 + BYOL heads, BN everywhere (vanilla BYOL, paper Table 2).

  Args:
    **overrides: model fields to replace, e.g. encoder_norm='gn'.

  Returns:
    The `model` section (an unlocked ConfigDict): depth, width, stem, norms
    per component, Weight Standardisation, head sizes (4096 -> 256), dtype.
  """
  model = ml_collections.ConfigDict(dict(
      depth=50,
      width_multiplier=1.0,
      stem='imagenet',
      # Scale of each residual block's last norm at init: 1 (False) as the
      # BYOL paper's runs (the official byol/README.md, "Note on batch
      # normalization": results were obtained with Haiku's default gamma =
      # 1, not the zero init its code ships with); the modified init sets
      # True: gamma0 = 0 for that layer (paper §3.2).
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
  ))
  model.update(overrides)
  return model


def build(arg=None, *, method=methods.BYOL, extra_options=(), model=None,
          epochs=300, training=None, options=None):
  """The full experiment config.

  Args:
    arg: the config string (options).
    method: 'byol' or 'simclr'.
    extra_options: option names the calling config accepts besides
      COMMON_OPTIONS (it applies them itself, from `options`).
    model: overrides of model_config().
    epochs: default number of pre-training epochs (selects the presets).
    training: overrides of the training section, applied after the presets.
    options: already-parsed options (else parsed from arg).

  Returns:
    ml_collections.ConfigDict of the inputs (no `derived` section: plan.build
    derives step counts and validates).

  Raises:
    ValueError: a malformed or unknown option, a non-positive epochs=,
      batch= or steps=, or both scale presets (tiny and cifar10).
  """
  if options is None:
    options = parse_options(arg, COMMON_OPTIONS + tuple(extra_options))
  if 'epochs' in options:
    epochs = _int_option(options, 'epochs')
  preset = epochs if epochs in LR_PRESETS else 300
  config = ml_collections.ConfigDict()
  # The config string's options as given (config.json records them; linear
  # evaluation reads whether `dataset=` named the data).
  config.options = arg or ''
  # 'pretrain' (then linear evaluation, eval.after_pretraining) or
  # 'linear_eval'; a non-empty eval.pretrain_workdir means 'linear_eval'.
  config.mode = 'pretrain'
  config.seed = 0
  # The paper's ImageNet linear-eval top-1 for this variant (-1: none).
  config.paper_top1 = -1.
  config.method = method
  config.data = ml_collections.ConfigDict(dict(
      source='tfds:imagenet2012',
      data_dir='',  # TFDS data_dir ('' for the TFDS default).
      image_size=224, pretrain_split='pretrain',
      min_crop_area=0.08,  # random-resized-crop scale range [0.08, 1] (BYOL).
      # Hold this many training examples out as a split of their own
      # ('held_out': the test split of sources without one, else the linear
      # probe's validation split). 0: none.
      held_out_examples=0,
      num_classes=-1,  # -1: the dataset's.
      # Datasets that fit in memory are decoded once, held as uint8 and
      # cropped on the devices: digits and synthetic always, image folders
      # (no TensorFlow needed) and TFDS datasets whose decoded size is at
      # most this many MiB (CIFAR-10: 176 MiB). Larger ones stream through
      # tf.data. 0: folders and TFDS datasets always stream.
      max_in_memory_mb=4096,
      # Side at which a folder's (or TFDS set's) images are held in memory:
      # 0 keeps their own size (all must share it, as CIFAR-10's and
      # STL-10's do; else a folder fails, a TFDS set streams); N resizes
      # each shorter side to N and keeps the central N x N square.
      cache_side=0,
      # Where decoded folders are cached ('': $XDG_CACHE_HOME/byol_jax/folders
      # or ~/.cache/byol_jax/folders).
      cache_dir='',
      # Where the in-memory arrays live: 'device' (a copy on every local
      # device; each step gathers its examples there) or 'host' (gathered
      # on the host, then cropped on the devices; for device memory that
      # cannot hold the dataset). The same numbers either way.
      in_memory_on='device'))
  config.model = model_config(**(model or {}))
  config.training = ml_collections.ConfigDict(dict(
      num_epochs=epochs,
      total_steps=-1,  # > 0 wins over num_epochs; -1: from num_epochs.
      max_steps=-1,  # stop (with a checkpoint) before total_steps; -1: don't.
      global_batch_size=4096,  # BYOL §3.3: 4096 over 512 TPU v3 cores.
      base_learning_rate=LR_PRESETS[preset],  # x batch / 256 (BYOL §3.3).
      warmup_epochs=10,  # BYOL §3.3.
      warmup_steps=-1,  # >= 0 wins over warmup_epochs; -1: derived.
      weight_decay=WD_PRESETS[preset],
      # LARS trust coefficient eta (BYOL §3.3 / official optimizer: 1e-3).
      trust_coefficient=1e-3,
      # The predictor's learning rate is this times the others'. The paper
      # and the official code use 1; short CPU runs use more (see apply_tiny).
      predictor_lr_multiplier=1.0,
      base_ema=EMA_PRESETS[preset],  # tau_base (BYOL §3.3).
      temperature=0.1,  # SimCLR InfoNCE temperature (SimCLR, batch 4096).
      # Paper §3.2: BN-free modified initialisation from one BN forward pass.
      modified_init=False,
      modified_init_batch_size=4096,
      # Images per device per forward pass of the calibration (memory).
      modified_init_chunk_size=256,
  ))
  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, every_secs=600, max_to_keep=3,
      # Resume a workdir whose checkpoint was trained under another
      # trajectory (resume.trajectory), e.g. to extend a finished run; the
      # change is recorded in WORKDIR/config_history.jsonl.
      allow_changed_config=False))
  config.logging = ml_collections.ConfigDict(dict(
      every_steps=50,
      knn_every_steps=5000,  # kNN monitor on the test split; 0 disables.
      knn_max_train_examples=10_000,
  ))
  # Linear evaluation, the paper's protocol (BYOL Appendix C.1): frozen
  # encoder, SGD with Nesterov momentum 0.9, no weight decay, cosine lr,
  # random-resized crop + flip for training, centre crop for testing.
  config.eval = ml_collections.ConfigDict(dict(
      after_pretraining=True,
      # Set: evaluate this pre-training run's encoder instead of training
      # (any config; data from the run unless data.source is set).
      pretrain_workdir='',
      num_epochs=80,
      global_batch_size=1024,
      # Base rates (x batch / 256) the protocol chooses from on a held-out
      # part of train; one value: no selection.
      learning_rates=(0.4, 0.3, 0.2, 0.1, 0.05),
      # Chosen on the dataset's validation split when it has one (ImageNet:
      # train[:10000], the official protocol); else on this many held-out
      # training examples, -1: a fifth of them, at most 10,000.
      sweep_valid_examples=-1,
      momentum=0.9,
      train_split='linear_train',
      test_split='test',
      augment=True,  # crop + flip per step; False: features computed once.
      random_baseline=False,  # also evaluate a randomly initialised encoder.
  ))

  if training:
    config.training.update(training)
  # Scale presets come after the variant's own hyper-parameters: they set what
  # depends on the run's length and size (steps, warm-up, tau) for every
  # variant alike, so tiny runs of two variants differ only by the variant.
  if options.get('tiny') and options.get('cifar10'):
    raise ValueError(f'config options tiny and cifar10 in {arg!r} are two '
                     'scales; use one of them.')
  if options.get('tiny'):
    apply_tiny(config)
  if options.get('cifar10'):
    apply_cifar10(config)
  if 'dataset' in options:
    config.data.source = options['dataset']
  if 'epochs' in options:
    # Chosen by the user: it replaces a scale preset's explicit step count.
    config.training.num_epochs = epochs
    config.training.total_steps = -1
  if 'batch' in options:
    config.training.global_batch_size = _int_option(options, 'batch')
  if 'steps' in options:
    config.training.total_steps = _int_option(options, 'steps')
  if options.get('bf16'):
    config.model.dtype = 'bfloat16'
  return config


def apply_tiny(config) -> None:
  """CPU-sized model, batch and step count (2-core laptop, minutes).

  ResNet-10 at width 1/4, 16 px digits, batch 256, 150 steps. A 150-step run
  is a thousand times shorter than the paper's, so the
  hyper-parameters that set how far a run travels are rescaled, identically
  for every variant (measured on the digits; docs/RESULTS.md):
    * LARS trust coefficient 1e-2 (paper 1e-3): LARS moves a weight matrix
      by about lr x eta of its norm per step; in the former tiny preset
      (batch 64, 300 steps, eta 1e-3, lr 0.06) the encoder's weights moved
      1.2% over the whole run, so every "trained" encoder was its random
      initialisation with re-tuned norm parameters.
    * predictor learning rate x30 (paper x1): at the paper's single rate the
      BN-free variants collapse within 50 steps here (GN+WS projection
      collapse statistic 0.04); a predictor that adapts faster than the
      encoder is what keeps non-contrastive training from collapsing (Tian,
      Chen & Ganguli, 2021, "Understanding self-supervised learning
      dynamics without contrastive pairs").
    * tau_base 0.99 (BYOL's 300-epoch preset): 0.996-0.999 leave the target
      of a 150-step run nearly frozen.
    * random-resized crops of at least 50% of the image (paper 8%): an 8%
      crop of an 8x8 digit is 2x2 pixels, which shows no digit.
    * one warm-up step per warm-up epoch (10; 50 for the modified init).

  Args:
    config: an experiment config from `build`, modified in place.
  """
  config.model.update(dict(depth=10, width_multiplier=0.25, stem='small',
                           projector_hidden_size=128, projector_output_size=32,
                           predictor_hidden_size=128))
  config.data.source = 'digits'
  config.data.image_size = 16
  config.data.min_crop_area = 0.5
  config.training.update(dict(
      global_batch_size=256, total_steps=150,
      warmup_steps=config.training.warmup_epochs,
      trust_coefficient=1e-2, predictor_lr_multiplier=30.,
      base_ema=EMA_PRESETS[300], modified_init_batch_size=256))
  config.checkpoint.update(dict(every_steps=100, every_secs=120))
  config.logging.update(dict(every_steps=10, knn_every_steps=50,
                             knn_max_train_examples=1500))
  # CPU-sized probe: features computed once (centre crop), then 400 cheap
  # epochs (2,000 steps of a linear layer, seconds). The per-step-augmented
  # probe of the paper needs far more steps than a laptop run affords
  # (measured on digits: 44% vs 85% top-1 for the same random encoder after
  # 100 steps); 100 epochs left even the precomputed-feature probe short of
  # convergence (random GN+WS encoder: 84.8%, vs 87.9% for an L-BFGS
  # logistic regression on the same features; 87.2% after 400 epochs).
  config.eval.update(dict(num_epochs=400, global_batch_size=256,
                          sweep_valid_examples=-1, augment=False))


def apply_cifar10(config) -> None:
  """CIFAR-scale runs on one GPU: ResNet-18, small-image stem, 32 px.

  The scale of the public BYOL-on-CIFAR-10 reproductions (ResNet-18 with a
  3x3 stride-1 stem and no max-pool, 32 px, batch 512): their BYOL reaches
  a kNN top-1 of about 0.87 after 200 epochs. The variant's lr / weight decay
  are kept; tau_base 0.99 suits 200 epochs (official 300-epoch preset).

  Args:
    config: an experiment config from `build`, modified in place.
  """
  config.model.update(dict(depth=18, width_multiplier=1.0, stem='small'))
  config.data.source = 'tfds:cifar10'
  config.data.image_size = 32
  config.training.update(dict(global_batch_size=512, num_epochs=200,
                              total_steps=-1, warmup_steps=-1,
                              warmup_epochs=min(config.training.warmup_epochs,
                                                20),
                              base_ema=EMA_PRESETS[300],
                              modified_init_batch_size=512))
  config.checkpoint.update(dict(every_steps=1000, every_secs=300))
  config.logging.update(dict(every_steps=50, knn_every_steps=2000,
                             knn_max_train_examples=10_000))
  # The paper's probe protocol (augmented crops, 80 epochs), cheap at 32 px.
  config.eval.update(dict(num_epochs=80, global_batch_size=1024,
                          sweep_valid_examples=-1, augment=True))


def load_experiment(name: str, arg: str = '', *,
                    experiments_dir=EXPERIMENTS_DIR
                    ) -> ml_collections.ConfigDict:
  """experiments/<name>.py's get_config(arg): what `--config=...:<arg>` gives.

  The one loader of experiment config files outside main.py (whose absl
  flag, ml_collections.config_flags, loads them from the command line):
  reproduce.py and the tests.

  Args:
    name: the experiment, e.g. 'gn_ws' (experiments/gn_ws.py).
    arg: the config string after the colon, e.g. 'tiny,dataset=digits'.
    experiments_dir: where the experiment configs live.

  Returns:
    The config of inputs (before any --config.* override).

  Raises:
    FileNotFoundError: no such experiment file, naming the fix.
  """
  path = pathlib.Path(experiments_dir) / f'{name}.py'
  if not path.exists():
    raise FileNotFoundError(
        f'{path} not found: run from a checkout of byol_jax (the experiment '
        'configs are not installed with the package) or pass '
        '--experiments_dir.')
  spec = importlib.util.spec_from_file_location(f'_exp_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
