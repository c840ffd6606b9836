"""Hyper-parameter presets: the official ones, the paper's variants, the scales
(`apply_*`: after the variant's own, for every variant alike)."""

from byol_jax.results import paper

# Official BYOL presets by pre-training epochs (byol/configs/byol.py; paper
# Appendix C): base learning rate (batch 256), weight decay and tau_base.
LR_PRESETS = {40: 0.45, 100: 0.45, 300: 0.3, 1000: 0.2}
WD_PRESETS = {40: 1e-6, 100: 1e-6, 300: 1e-6, 1000: 1.5e-6}
EMA_PRESETS = {40: 0.97, 100: 0.99, 300: 0.99, 1000: 0.996}


def preset_epochs(epochs) -> int:
  """The official preset a run of `epochs` follows: its own, else 300's."""
  return epochs if epochs in LR_PRESETS else 300


# GN + WS BYOL, paper §3.3: "we apply weight standardization to convolutional
# and linear parameters ... and replace all BN by GN layers", G = 16; base lr
# 0.24, weight decay 3e-8, tau_base 0.999 (the online classifier stays plain).
GN_WS_MODEL = dict(
    encoder_norm='gn',
    projector_norm='gn',
    predictor_norm='gn',
    gn_groups=16,
    encoder_ws=True,
    heads_ws=True,
)
GN_WS_TRAINING = dict(
    base_learning_rate=0.24, weight_decay=3e-8, base_ema=0.999
)
GN_WS_PAPER_TOP1 = paper.TABLE2['gn_ws']

# logging.collapse_stop_below: the tiny runs' lowest final collapse_std short of
# the paper's collapse is 0.031 (Table 1's LN / - / BN cell; others 0.17-0.89);
# no normalisation ends at 0.000 (docs/RESULTS.md).
COLLAPSE_STOP_BELOW = 1e-3


def collapse_stop_below(method: str, model) -> float:
  """0 (off) for a cell the paper reports collapsed, else COLLAPSE_STOP_BELOW"""
  top1 = paper.table1(
      method, model.encoder_norm, model.projector_norm, model.predictor_norm
  )
  return 0.0 if paper.collapsed(top1) else COLLAPSE_STOP_BELOW


# Paper Table 1's normalisations of a component ('ln': GroupNorm, one group).
TABLE1_NORMS = ('bn', 'ln', 'none')


def apply_tiny(config) -> None:
  """CPU-sized: ResNet-10 at width 1/4, 16 px digits, batch 256, 150 steps.

  Rescaled alike for a run 1000x shorter (docs/RESULTS.md). LARS eta 1e-2: at
  1e-3 the encoder's weights moved 1.2% in 300 steps of lr 0.06. Predictor lr
  x30: at x1 the BN-free variants collapse within 50 steps (Tian, Chen &
  Ganguli, 2021). tau_base 0.99: 0.996-0.999 leave the target nearly frozen.
  Crops >= 50%: 8% of an 8x8 digit is 2x2 px. Probe: centre-crop features once,
  400 epochs (random GN+WS encoder: 84.8% after 100, 87.2% after 400, L-BFGS
  87.9%; per-step augmentation: 44% where features get 85% after 100 steps).
  """
  config.update(
      model=dict(
          depth=10,
          width_multiplier=0.25,
          stem='small',
          projector_hidden_size=128,
          projector_output_size=32,
          predictor_hidden_size=128,
      ),
      data=dict(source='digits', image_size=16, min_crop_area=0.5),
      training=dict(
          global_batch_size=256,
          total_steps=150,
          warmup_steps=int(config.training.warmup_epochs),
          trust_coefficient=1e-2,
          predictor_lr_multiplier=30.0,
          base_ema=EMA_PRESETS[300],
          modified_init_batch_size=256,
      ),
      checkpoint=dict(every_steps=100, every_secs=120),
      logging=dict(
          every_steps=10, knn_every_steps=50, knn_max_train_examples=1500
      ),
      eval=dict(num_epochs=400, global_batch_size=256, augment=False),
  )


def apply_cifar10(config) -> None:
  """One GPU: public BYOL-on-CIFAR-10 reproductions' scale (kNN top-1 ~0.87)."""
  config.update(
      model=dict(depth=18, width_multiplier=1.0, stem='small'),
      data=dict(source='tfds:cifar10', image_size=32),
      training=dict(
          global_batch_size=512,
          num_epochs=200,
          total_steps=-1,
          warmup_steps=-1,
          warmup_epochs=min(config.training.warmup_epochs, 20),
          base_ema=EMA_PRESETS[300],
          modified_init_batch_size=512,
      ),
      checkpoint=dict(every_secs=300),
      logging=dict(knn_every_steps=2000),
  )


SMALL_EPOCHS = 4  # the `small` scale's run length


def apply_small(config) -> None:
  """CIFAR-10 on a 2-core CPU, the paper's optimiser: 781 steps, 8-9 minutes.

  Base lr, weight decay and 1 - tau move from the preset of the variant's run
  length to the shortest (40 epochs) by the same ratio (BN 0.2 -> 0.45, GN+WS
  0.24 -> 0.54); warm-up: a quarter of the run per 10 warm-up epochs (as 40
  epochs' 10), at most half.
  """
  t = config.training
  own, to = preset_epochs(t.num_epochs), 40
  warmup = min(t.warmup_epochs / 10 / 4, 0.5)

  def moved(field, table, digits, one=0):
    # x preset[to] / preset[own]; for tau (one=1) 1 - tau moves so.
    gap = (one - t[field]) * (one - table[to]) / (one - table[own])
    return round(one - gap, digits)

  config.update(
      training=dict(
          base_learning_rate=moved('base_learning_rate', LR_PRESETS, 9),
          weight_decay=moved('weight_decay', WD_PRESETS, 15),
          base_ema=moved('base_ema', EMA_PRESETS, 9, one=1.0),
          num_epochs=SMALL_EPOCHS,
          total_steps=-1,
          warmup_steps=-1,
          warmup_epochs=warmup * SMALL_EPOCHS,
          global_batch_size=256,
          modified_init_batch_size=256,
      ),
      model=dict(depth=10, width_multiplier=0.25, stem='small'),
      data=dict(source='tfds:cifar10', image_size=16),
      checkpoint=dict(every_steps=200, every_secs=300),
      logging=dict(every_steps=20, knn_every_steps=260),
      eval=dict(
          num_epochs=100,
          global_batch_size=256,
          augment=False,
          random_baseline=True,
      ),
  )
