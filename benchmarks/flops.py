"""FLOP accounting of the training step: XLA's count, the analytic count, peaks.

Used by benchmarks/throughput.py. `step_flops` counts without running or
compiling anything (abstract shapes, lowering, XLA's cost analysis), so it is
cheap even for ResNet-50 at 224 px on a CPU; `analytic_flops_per_image` is
the usual 8-forward-pass rule computed from the architecture;
`peak_flops` is the table MFU
divides by.
"""

from typing import Optional, Tuple

from byol_jax import methods

# Issue 7's analytic cost of BYOL with ResNet-50 at 224 px, per image. A
# ResNet-50 forward pass is ~4.1 G multiply-adds = ~8.2 GFLOP (2 FLOP per
# multiply-add, the convention of XLA's cost analysis). Each image gives two
# views; each view goes through the online network forward and backward
# (backward ~2x forward: gradients w.r.t. activations and w.r.t. weights, so
# ~3 forwards in all) and through the target network forward (1 more):
# 2 x (3 + 1) = 8 forward passes x 8.2 GFLOP = 65.8 GFLOP. The heads (~10 M
# multiply-adds per pass), augmentation, LARS and the EMA add well under 1%.
ISSUE_RESNET50_BYOL_FLOPS_PER_IMAGE = 65.8e9

# Dense peak FLOP/s per JAX device, by (lower-cased) device_kind substring;
# the first match wins. "float32" is the peak of what XLA runs float32
# convolutions and matmuls on by default: TF32 tensor cores on NVIDIA
# Ampere/Hopper, one bfloat16 pass on TPU (docs.jax.dev, "Matmul precision").
# Sources: NVIDIA A100/H100/H200 datasheets (the "with sparsity" figures
# halved); Cloud TPU system-architecture pages. A TPU v3 chip (123 TFLOP/s)
# has two TensorCores and JAX shows each as a device; v4/v5 show one per chip.
PEAK_FLOPS = (
    # (device_kind substring, name, bfloat16 FLOP/s, float32 FLOP/s)
    ('h100 pcie', 'NVIDIA H100 PCIe', 756e12, 378e12),
    ('h100', 'NVIDIA H100 SXM', 989.4e12, 494.7e12),
    ('h200 nvl', 'NVIDIA H200 NVL', 835.5e12, 417.5e12),
    ('h200', 'NVIDIA H200 SXM', 989.4e12, 494.7e12),
    ('a100', 'NVIDIA A100', 312e12, 156e12),
    ('tpu v3', 'TPU v3 (per TensorCore)', 61.5e12, 61.5e12),
    ('tpu v4', 'TPU v4', 275e12, 275e12),
    ('tpu v5 lite', 'TPU v5e', 197e12, 197e12),
    ('tpu v5e', 'TPU v5e', 197e12, 197e12),
    ('tpu v5', 'TPU v5p', 459e12, 459e12),
)
CPU_MFU_NOTE = (
    'no MFU on CPU: its peak depends on the SIMD width, the FMA '
    'units and the sustained clock of a (possibly shared, '
    'virtualised) core, none of which JAX reports'
)


def peak_flops(
    device_kind: str, dtype: str
) -> Tuple[Optional[float], Optional[str]]:
  """Peak FLOP/s of one device for a compute dtype.

  Args:
    device_kind: jax.Device.device_kind, e.g. 'NVIDIA H100 80GB HBM3'.
    dtype: 'float32' or 'bfloat16'.

  Returns:
    (peak FLOP/s per device, the table entry's name), or (None, None) for a
    device not in PEAK_FLOPS (CPUs included).
  """
  kind = device_kind.lower()
  for substring, name, bf16, f32 in PEAK_FLOPS:
    if substring in kind:
      return (bf16 if dtype == 'bfloat16' else f32), name
  return None, None


def _same(size: int, stride: int) -> int:
  return -(-size // stride)  # 'SAME' padding: ceil(size / stride).


def encoder_macs(depth: int, width: float, stem: str, image_size: int) -> int:
  """Multiply-adds of one image's ResNet forward (convolutions only).

  Follows byol_jax/models/resnet.py: 'imagenet' stem = 7x7/2 conv + 3x3/2
  max-pool, 'small' stem = 3x3/1 conv; bottleneck blocks put the stride on
  the 3x3 convolution; a 1x1 projection shortcut where the shape changes.
  """
  from byol_jax.models import resnet  # pylint: disable=g-import-not-at-top

  block, blocks_per_stage = resnet.DEPTHS[resnet.check_depth(depth)]
  bottleneck = block == 'bottleneck'
  c = int(64 * width)
  if stem == 'imagenet':
    s = _same(image_size, 2)
    macs = s * s * 7 * 7 * 3 * c
    s = _same(s, 2)
  else:
    s = image_size
    macs = s * s * 3 * 3 * 3 * c
  for num_blocks, base, stride in zip(
      blocks_per_stage, (64, 128, 256, 512), (1, 2, 2, 2)
  ):
    out_c = int(base * (4 if bottleneck else 1) * width)
    for b in range(num_blocks):
      block_stride = stride if b == 0 else 1
      out_s = _same(s, block_stride)
      if bottleneck:
        mid = out_c // 4
        macs += s * s * c * mid + out_s * out_s * (9 * mid * mid + mid * out_c)
      else:
        macs += out_s * out_s * 9 * (c * out_c + out_c * out_c)
      if b == 0 and (block_stride != 1 or c != out_c):
        macs += out_s * out_s * c * out_c
      c, s = out_c, out_s
  return macs


def analytic_flops_per_image(config) -> float:
  """The 8-forward-pass rule, computed from the architecture: FLOP per image.

  2 FLOP per multiply-add of the convolutions and head layers; per view the
  trained network costs 3 forwards (forward + backward) and, for BYOL, the
  target network 1 more. Norms, activations, augmentation, the online
  classifier and the optimizer are left out. ResNet-50 BYOL at 224 px gives
  65.6 GFLOP (the rule's round figure: 65.8).

  Args:
    config: an experiment config (method, model, data.image_size).

  Returns:
    FLOP per image (both views).
  """
  from byol_jax.models import resnet  # pylint: disable=g-import-not-at-top

  m = config.model
  encoder = encoder_macs(
      m.depth, m.width_multiplier, m.stem, config.data.image_size
  )
  features = resnet.feature_size(m.depth, m.width_multiplier)
  projector = (
      features * m.projector_hidden_size
      + m.projector_hidden_size * m.projector_output_size
  )
  predictor = 2 * m.projector_output_size * m.predictor_hidden_size
  if config.method == methods.BYOL:
    per_view = 3 * (encoder + projector + predictor) + (encoder + projector)
  else:  # SimCLR: no predictor, no target network.
    per_view = 3 * (encoder + projector)
  return 2.0 * 2 * per_view


def cost_flops(stage) -> Optional[float]:
  """'flops' of a jax Lowered/Compiled stage's cost analysis, or None."""
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per module.
    cost = cost[0] if cost else None
  flops = (cost or {}).get('flops')
  return float(flops) if flops is not None and flops > 0 else None


def step_flops(run, num_devices: int = 1) -> float:
  """FLOPs of one pmapped update of the global batch, without running it.

  Nothing is initialised or compiled: the TrainState comes from
  jax.eval_shape, the batch is ShapeDtypeStructs, and the count is XLA's cost
  analysis of the lowered (pre-optimisation) HLO of one device's program,
  times num_devices. ResNet-50 BYOL at 224 px takes 5-10 s on a CPU.

  XLA counts only the kernel taps that fall inside the image, whereas the
  usual ResNet figures (and analytic_flops_per_image) count the zero padding
  of 'SAME' convolutions too; so XLA's count is lower, by ~3% for ResNet-50
  at 224 px (63.6 vs 65.6 GFLOP per image) and ~13% for ResNet-18 at 32 px,
  where the last stage is 4x4 and a 3x3 kernel overhangs a quarter of it.
  MFU uses XLA's count: it is the arithmetic the step actually asks for.

  Args:
    run: a built plan.Run (see throughput.make_run).
    num_devices: devices the update is pmapped over (must exist locally).

  Returns:
    FLOPs of one step over all devices.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from byol_jax import experiment  # pylint: disable=g-import-not-at-top

  config = run.config
  method, optimizer, update = experiment.make_update(config, run.pretrain)
  state = jax.eval_shape(
      lambda: experiment.init_train_state(
          method,
          optimizer,
          jax.random.PRNGKey(0),
          experiment.sample_images(config),
      )
  )
  per_device = lambda x: jax.ShapeDtypeStruct((num_devices,) + x.shape, x.dtype)
  state = jax.tree.map(per_device, state)
  b = config.training.global_batch_size // num_devices
  size = config.data.image_size
  view = jax.ShapeDtypeStruct((num_devices, b, size, size, 3), jnp.float32)
  batch = {
      'view1': view,
      'view2': view,
      'label': jax.ShapeDtypeStruct((num_devices, b), jnp.int32),
  }
  step = experiment.pmap_update(
      update, devices=jax.local_devices()[:num_devices]
  )
  return cost_flops(step.lower(state, batch)) * num_devices
