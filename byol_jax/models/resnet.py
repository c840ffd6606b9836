"""ResNet v1 encoders with injected normalisation and Weight Standardisation.

Depths 18/34 use basic blocks, 50/101/152/200 bottleneck blocks (He et al.,
2016; the stride sits on the 3x3 convolution, as in Haiku's ResNet v1 that the
official BYOL code uses). Depth 10 ([1, 1, 1, 1] basic blocks) is a
non-standard small network for CPU tests and tiny configs.

The width multiplier scales every layer including the stem, as in the
SimCLR/BYOL ResNet-50 (2x, 3x, 4x). Returns globally average-pooled features:
2048 * width for bottleneck networks, 512 * width for basic ones.

Conventions where ResNet implementations differ (the paper's networks are
ResNet-50s, where they agree):
  * Shortcuts: a 1x1 projection (+ norm) only where the shape changes. In a
    bottleneck network that includes stage 0's first block (64 -> 256
    channels), as everywhere. In basic-block networks (18/34) stage 0 keeps
    64 channels at stride 1, so its first block has an identity shortcut, as
    in He et al. (2016) and torchvision; Haiku's ResNet18/34 (the official
    BYOL code's small-scale encoder) projects there.
  * zero_init_last: the scale of each block's last norm starts at 0 (Goyal
    et al., 2017) in every block kind, bottleneck and basic, when set; Haiku
    zero-inits it in bottleneck blocks only. Paper configs set it False
    (gamma = 1, as the BYOL paper's runs, byol/README.md) except the
    modified init, whose gamma0 = 0 for that layer is part of the method
    (§3.2).

Module names are explicit and independent of the normalisation kind:
  encoder/stem_conv, encoder/stem_norm,
  encoder/stage{s}_block{b}/conv_{i}, .../norm_{i},
  .../shortcut_conv, .../shortcut_norm.
"""

from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp

from byol_jax.models import layers
from byol_jax.models import norms

# depth -> (block kind, blocks per stage).
DEPTHS = {
    10: ('basic', (1, 1, 1, 1)),
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}
STEMS = ('imagenet', 'small')
_STAGE_WIDTHS = (64, 128, 256, 512)  # Bottleneck blocks output 4x these.
_STAGE_STRIDES = (1, 2, 2, 2)


def check_depth(depth: int, field: str = 'depth') -> int:
  """Returns `depth`; a ValueError naming `field` unless it is in DEPTHS."""
  if depth not in DEPTHS:
    raise ValueError(
        f'{field}={depth!r} is not a supported ResNet depth; use '
        f'one of {sorted(DEPTHS)}.'
    )
  return depth


def feature_size(depth: int, width_multiplier: float = 1) -> int:
  """Pooled feature size: 512 (basic) or 2048 (bottleneck) x the width."""
  block, _ = DEPTHS[check_depth(depth)]
  return _width(512 * (4 if block == 'bottleneck' else 1), width_multiplier)


def norm_channels(depth: int, width_multiplier: float) -> dict:
  """{where: channels} of every norm layer in order (maybe fractional)."""
  block, _ = DEPTHS[check_depth(depth)]
  out = {'the stem': 64 * width_multiplier}
  for s, width in enumerate(_STAGE_WIDTHS):
    out[f'stage {s}'] = width * width_multiplier
    if block == 'bottleneck':
      out[f"stage {s}'s block outputs"] = 4 * width * width_multiplier
  return out


def _width(channels: int, multiplier: float) -> int:
  width = channels * multiplier
  if width != int(width) or width < 1:
    raise ValueError(
        f'width_multiplier={multiplier} gives {width} channels '
        f'for a {channels}-channel layer; use a multiplier that '
        'gives whole channel counts (e.g. 0.25, 0.5, 1, 2, 4).'
    )
  return int(width)


class _Block(hk.Module):
  """Residual block v1: (conv -> norm -> relu)* -> conv -> norm, + shortcut."""

  def __init__(
      self,
      channels: int,
      stride: int,
      bottleneck: bool,
      project: bool,
      norm: norms.NormSpec,
      ws: bool,
      zero_init_last: bool,
      name: str,
  ):
    super().__init__(name=name)
    self.channels, self.stride = channels, stride
    self.bottleneck, self.project = bottleneck, project
    self.norm, self.ws, self.zero_init_last = norm, ws, zero_init_last

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    if self.bottleneck:
      # (out channels, kernel, stride): 1x1 reduce, 3x3 (strided), 1x1 expand.
      convs = (
          (self.channels // 4, 1, 1),
          (self.channels // 4, 3, self.stride),
          (self.channels, 1, 1),
      )
    else:
      convs = ((self.channels, 3, self.stride), (self.channels, 3, 1))
    shortcut = x
    if self.project:
      shortcut = layers.Conv2D(
          self.channels, 1, self.stride, self.ws, name='shortcut_conv'
      )(x)
      shortcut = norms.make_norm(self.norm, 'shortcut_norm')(
          shortcut, is_training
      )
    out = x
    for i, (channels, kernel, stride) in enumerate(convs):
      last = i == len(convs) - 1
      out = layers.Conv2D(channels, kernel, stride, self.ws, name=f'conv_{i}')(
          out
      )
      out = norms.make_norm(
          self.norm, f'norm_{i}', zero_init=last and self.zero_init_last
      )(out, is_training)
      if not last:
        out = jax.nn.relu(out)
    return jax.nn.relu(out + shortcut)


class ResNet(hk.Module):
  """ResNet v1: images [N, H, W, C] -> pooled features [N, feature_size] f32."""

  def __init__(
      self,
      depth: int = 50,
      width_multiplier: float = 1,
      stem: str = 'imagenet',
      norm='bn',
      weight_standardization: bool = False,
      zero_init_last: bool = False,
      dtype=jnp.float32,
      name: Optional[str] = 'encoder',
  ):
    """Describes the network (no parameters are created here).

    Args:
      depth: one of DEPTHS.
      width_multiplier: scales every layer's channels (1 to 4 in the paper;
        0.25 gives CPU-sized networks).
      stem: 'imagenet' (7x7 stride-2 conv + 3x3 stride-2 max-pool) or 'small'
        (3x3 stride-1 conv, no pooling; 32-pixel images).
      norm: a norms.NormSpec or kind string, for every norm layer.
      weight_standardization: standardise every convolution's kernel.
      zero_init_last: each block's last norm scale starts at 0 (Goyal et al.;
        the gamma0 = 0 of the modified init, paper §3.2).
      dtype: compute dtype (bfloat16 for mixed precision); parameters, norm
        statistics and the pooled output stay float32.
      name: module name.

    Raises:
      ValueError: depth not in DEPTHS, stem not in STEMS, or a width_multiplier
        giving a fractional or zero channel count.
    """
    super().__init__(name=name)
    self.block, self.blocks_per_stage = DEPTHS[check_depth(depth)]
    if stem not in STEMS:
      raise ValueError(
          f'stem={stem!r} is not a ResNet stem; use one of '
          f'{", ".join(STEMS)}.'
      )
    self.depth, self.stem = depth, stem
    self.width_multiplier = width_multiplier
    self.norm = norms.as_norm_spec(norm)
    self.ws = weight_standardization
    self.zero_init_last = zero_init_last
    self.dtype = dtype
    _width(64, width_multiplier)  # Validate early, before any tracing.

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Encodes images (BatchNorm uses batch statistics when is_training)."""
    x = x.astype(self.dtype)
    stem_width = _width(64, self.width_multiplier)
    if self.stem == 'imagenet':
      x = layers.Conv2D(stem_width, 7, 2, self.ws, name='stem_conv')(x)
    else:
      x = layers.Conv2D(stem_width, 3, 1, self.ws, name='stem_conv')(x)
    x = jax.nn.relu(norms.make_norm(self.norm, 'stem_norm')(x, is_training))
    if self.stem == 'imagenet':
      x = hk.max_pool(
          x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding='SAME'
      )
    bottleneck = self.block == 'bottleneck'
    in_channels = stem_width
    for s, (num_blocks, width, stride) in enumerate(
        zip(self.blocks_per_stage, _STAGE_WIDTHS, _STAGE_STRIDES)
    ):
      channels = _width(width * (4 if bottleneck else 1), self.width_multiplier)
      for b in range(num_blocks):
        block_stride = stride if b == 0 else 1
        project = b == 0 and (block_stride != 1 or in_channels != channels)
        x = _Block(
            channels,
            block_stride,
            bottleneck,
            project,
            self.norm,
            self.ws,
            self.zero_init_last,
            name=f'stage{s}_block{b}',
        )(x, is_training)
        in_channels = channels
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
