"""The experiment config: its schema, its options, and the experiment loader.

Each experiments/<name>.py is a thin `get_config(arg)` that returns
`experiment_config(arg, ...)` with its variant: a config of inputs only.
`arg` is the string after the colon in `--config=experiments/<name>.py:<arg>`:
comma-separated options, e.g. `tiny,dataset=digits,epochs=100`. Options
common to every config:

  tiny             a CPU-sized model (ResNet-10 at width 1/4, 16 px images),
                   batch 256 and 150 steps, on the digits by default.
  small            CIFAR-10 on a 2-core CPU with the paper's optimiser
                   (ResNet-10 at width 1/4, 16 px, batch 256, 4 epochs).
  cifar10          ResNet-18 with the small-image stem at 32 px, batch 512,
                   200 epochs, on tfds:cifar10 by default (one GPU).
  dataset=SOURCE   tfds:<name> | folder:<path> | digits | synthetic[:side].
  epochs=N         pre-training epochs (clears a preset's step count);
                   40/100/300/1000 also select the official BYOL presets of
                   lr, weight decay and tau.
  batch=N          global batch size.
  steps=N          total pre-training steps (wins over epochs).
  bf16             compute in bfloat16 (float32 parameters and statistics).

The presets (the official ones by epochs, the GN + WS variant, the scale
presets behind `tiny`, `small` and `cifar10`) are presets.py's.

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
from byol_jax import presets

# The experiment configs of a checkout (not installed with the package).
EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parents[1] / 'experiments'

SCALES = ('tiny', 'small', 'cifar10')
COMMON_OPTIONS = SCALES + ('dataset', 'epochs', 'batch', 'steps', 'bf16')
# Options that take no value (all others need one: `name=value`).
FLAG_OPTIONS = SCALES + ('bf16',)


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
          f'{", ".join(sorted(allowed))}.'
      )
    if name in options:
      raise ValueError(
          f'config option {name!r} is given twice in {arg!r}; ' 'give it once.'
      )
    if name in FLAG_OPTIONS:
      if sep:
        raise ValueError(
            f'config option {name} takes no value (got '
            f'{item.strip()!r}); write {name} to turn it on, '
            'or leave it out.'
        )
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
    raise ValueError(
        f'config option {name}={options[name]!r} must be a ' 'positive integer.'
    )
  return value


def model_config(**overrides) -> ml_collections.ConfigDict:
  """ResNet-50 + BYOL heads, BN everywhere (vanilla BYOL, paper Table 2).

  Args:
    **overrides: model fields to replace, e.g. encoder_norm='gn'.

  Returns:
    The `model` section (an unlocked ConfigDict): depth, width, stem, norms
    per component, Weight Standardisation, head sizes (4096 -> 256), dtype.
  """
  model = ml_collections.ConfigDict(
      dict(
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
          # BN statistics over the global batch (official).
          cross_replica_bn=True,
          bn_decay=0.9,  # BN moving-average decay (official bn_config).
          projector_hidden_size=4096,  # BYOL §3.3: MLP 4096 -> 256.
          projector_output_size=256,
          predictor_hidden_size=4096,
      )
  )
  model.update(overrides)
  return model


def experiment_config(
    arg=None,
    *,
    method=methods.BYOL,
    extra_options=(),
    model=None,
    epochs=300,
    training=None,
    options=None,
):
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
      batch= or steps=, or two scale presets (tiny, small, cifar10).
  """
  if options is None:
    options = parse_options(arg, COMMON_OPTIONS + tuple(extra_options))
  if 'epochs' in options:
    epochs = _int_option(options, 'epochs')
  preset = epochs if epochs in presets.LR_PRESETS else 300
  config = ml_collections.ConfigDict()
  # The config string's options as given (config.json records them; linear
  # evaluation reads whether `dataset=` named the data).
  config.options = arg or ''
  # 'pretrain' (then linear evaluation, eval.after_pretraining) or
  # 'linear_eval'; a non-empty eval.pretrain_workdir means 'linear_eval'.
  config.mode = 'pretrain'
  config.seed = 0
  # The paper's ImageNet linear-eval top-1 for this variant (-1: none).
  config.paper_top1 = -1.0
  config.method = method
  config.data = ml_collections.ConfigDict(
      dict(
          source='tfds:imagenet2012',
          data_dir='',  # TFDS data_dir ('' for the TFDS default).
          image_size=224,
          pretrain_split='pretrain',
          # random-resized-crop scale range [0.08, 1] (BYOL).
          min_crop_area=0.08,
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
          # Where decoded folders are cached
          # ('': $XDG_CACHE_HOME/byol_jax/folders
          # or ~/.cache/byol_jax/folders).
          cache_dir='',
          # Where the in-memory arrays live: 'device' (a copy on every local
          # device; each step gathers its examples there) or 'host' (gathered
          # on the host, then cropped on the devices; for device memory that
          # cannot hold the dataset). The same numbers either way.
          in_memory_on='device',
      )
  )
  config.model = model_config(**(model or {}))
  config.training = ml_collections.ConfigDict(
      dict(
          num_epochs=epochs,
          total_steps=-1,  # > 0 wins over num_epochs; -1: from num_epochs.
          # stop (with a checkpoint) before total_steps; -1: don't.
          max_steps=-1,
          global_batch_size=4096,  # BYOL §3.3: 4096 over 512 TPU v3 cores.
          # x batch / 256 (BYOL §3.3).
          base_learning_rate=presets.LR_PRESETS[preset],
          # BYOL §3.3 (a float: short runs warm up for less).
          warmup_epochs=10.0,
          warmup_steps=-1,  # >= 0 wins over warmup_epochs; -1: derived.
          weight_decay=presets.WD_PRESETS[preset],
          # LARS trust coefficient eta (BYOL §3.3 / official optimizer: 1e-3).
          trust_coefficient=1e-3,
          # The predictor's learning rate is this times the others'. The paper
          # and the official code use 1; short CPU runs use more (see
          # presets.apply_tiny).
          predictor_lr_multiplier=1.0,
          base_ema=presets.EMA_PRESETS[preset],  # tau_base (BYOL §3.3).
          temperature=0.1,  # SimCLR InfoNCE temperature (SimCLR, batch 4096).
          # Paper §3.2: BN-free modified init from one BN forward pass.
          modified_init=False,
          modified_init_batch_size=4096,
          # Images per device per forward pass of the calibration (memory).
          modified_init_chunk_size=256,
      )
  )
  config.checkpoint = ml_collections.ConfigDict(
      dict(
          every_steps=1000,
          every_secs=600,
          max_to_keep=3,
          # Resume a workdir whose checkpoint was trained under another
          # trajectory (resume.trajectory), e.g. to extend a finished run; the
          # change is recorded in WORKDIR/config_history.jsonl.
          allow_changed_config=False,
      )
  )
  config.logging = ml_collections.ConfigDict(
      dict(
          every_steps=50,
          knn_every_steps=5000,  # kNN monitor on the test split; 0 disables.
          knn_max_train_examples=10_000,
          # Stop pre-training (checkpoint kept, one line, exit 1) when the
          # projections' collapse statistic stays below this for
          # collapse_stop_after logged steps in a row; 0: never. Off for the
          # variants the paper reports collapsing (presets.collapse_stop_below).
          collapse_stop_below=presets.collapse_stop_below(method, config.model),
          collapse_stop_after=5,
      )
  )
  # Linear evaluation, the paper's protocol (BYOL Appendix C.1): frozen
  # encoder, SGD with Nesterov momentum 0.9, no weight decay, cosine lr,
  # random-resized crop + flip for training, centre crop for testing.
  config.eval = ml_collections.ConfigDict(
      dict(
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
          # also evaluate a randomly initialised encoder.
          random_baseline=False,
      )
  )

  if training:
    config.training.update(training)
  # Scale presets come after the variant's own hyper-parameters: they set what
  # depends on the run's length and size (steps, warm-up, tau) for every
  # variant alike, so tiny runs of two variants differ only by the variant.
  scales = [s for s in SCALES if options.get(s)]
  if len(scales) > 1:
    raise ValueError(
        f'config options {" and ".join(scales)} in {arg!r} are '
        'scales; use one of them.'
    )
  if scales:
    getattr(presets, f'apply_{scales[0]}')(config)
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


def load_experiment(
    name: str, arg: str = '', *, experiments_dir=EXPERIMENTS_DIR
) -> ml_collections.ConfigDict:
  """experiments/<name>.py's get_config(arg): what `--config=...:<arg>` gives.

  The one loader of experiment config files outside main.py (whose absl
  flag, ml_collections.config_flags, loads them from the command line):
  variants.py (reproduce) and the tests.

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
        '--experiments_dir.'
    )
  spec = importlib.util.spec_from_file_location(f'_exp_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
