"""ResNet v1 encoders with injected normalisation and Weight Standardisation.

Depths 18/34: basic blocks; 50-200: bottleneck blocks, stride on the 3x3 conv
(He et al., 2016; Haiku's ResNet v1, as the official BYOL code); 10 ([1, 1,
1, 1] basic) is for CPU tests. The width multiplier scales every layer, stem
included (BYOL's 2x-4x). Where implementations differ (not on ResNet-50):
  * A 1x1 projection shortcut (+ norm) only where the shape changes: basic
    nets keep stage 0's identity shortcut (torchvision), where Haiku's
    ResNet18/34 (the official small encoder) projects.
  * zero_init_last (Goyal et al., 2017) in every block kind (Haiku: bottleneck
    only); off in the paper configs (gamma 1, as the official README's runs),
    on for the modified init (§3.2's gamma0 = 0).
Module names, whatever the norm: encoder/stem_{conv,norm},
encoder/stage{s}_block{b}/{conv,norm}_{i}, .../shortcut_{conv,norm}.
"""

import dataclasses
import functools
from typing import Any, Optional

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


def check_depth(depth: int, field: str = 'depth') -> int:
  """Returns `depth`; a ValueError naming `field` unless it is in DEPTHS."""
  if depth not in DEPTHS:
    raise ValueError(f'{field}={depth!r}: use one of {sorted(DEPTHS)}.')
  return depth


def check_stem(stem: str, field: str = 'stem') -> str:
  """Returns `stem`; a ValueError naming `field` unless it is in STEMS."""
  if stem not in STEMS:
    raise ValueError(f'{field}={stem!r}: use one of {", ".join(STEMS)}.')
  return stem


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
        f'width_multiplier={multiplier} gives {width} channels for a {channels}'
        '-channel layer; use one giving whole counts (e.g. 0.25, 0.5, 1, 2, 4).'
    )
  return int(width)


def _block(x, is_training, channels, stride, project, net):
  """Residual block v1: (conv -> norm -> relu)* -> conv -> norm, + shortcut."""
  norm = functools.partial(norms.make_norm, net.norm)
  ws = net.weight_standardization
  # (out channels, kernel, stride) per conv.
  if DEPTHS[net.depth][0] == 'bottleneck':  # 1x1 reduce, 3x3 strided, 1x1.
    convs = ((channels // 4, 1, 1), (channels // 4, 3, stride))
    convs += ((channels, 1, 1),)
  else:
    convs = ((channels, 3, stride), (channels, 3, 1))
  shortcut = x
  if project:
    shortcut = layers.Conv2D(channels, 1, stride, ws, name='shortcut_conv')(x)
    shortcut = norm('shortcut_norm')(shortcut, is_training)
  for i, (c, kernel, s) in enumerate(convs):
    last = i == len(convs) - 1
    x = layers.Conv2D(c, kernel, s, ws, name=f'conv_{i}')(x)
    x = norm(f'norm_{i}', last and net.zero_init_last)(x, is_training)
    if not last:
      x = jax.nn.relu(x)
  return jax.nn.relu(x + shortcut)


@dataclasses.dataclass
class ResNet(hk.Module):
  """ResNet v1: images [N, H, W, C] -> pooled features [N, feature_size].

  Attributes:
    width_multiplier: scales every layer's channels (paper: 1-4).
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max-pool) or 'small' (3x3/1 conv,
      no pooling; 32 px images).
    norm: a norms.NormSpec or kind string, for every norm layer.
    zero_init_last: each block's last norm scale starts at 0.
    dtype: compute dtype (parameters, statistics and the output: float32).

  A bad depth, stem, norm or width raises ValueError at init.
  """

  depth: int = 50
  width_multiplier: float = 1
  stem: str = 'imagenet'
  norm: Any = 'bn'
  weight_standardization: bool = False
  zero_init_last: bool = False
  dtype: Any = jnp.float32
  name: Optional[str] = 'encoder'

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Encodes images (BatchNorm uses batch statistics when is_training)."""
    kind, blocks_per_stage = DEPTHS[check_depth(self.depth)]
    imagenet = check_stem(self.stem) == 'imagenet'
    channels = _width(64, self.width_multiplier)
    kernel, stride = (7, 2) if imagenet else (3, 1)
    ws = self.weight_standardization
    x = x.astype(self.dtype)
    x = layers.Conv2D(channels, kernel, stride, ws, name='stem_conv')(x)
    x = jax.nn.relu(norms.make_norm(self.norm, 'stem_norm')(x, is_training))
    if imagenet:
      x = hk.max_pool(x, (1, 3, 3, 1), (1, 2, 2, 1), padding='SAME')
    expansion = 4 if kind == 'bottleneck' else 1
    for s, num_blocks in enumerate(blocks_per_stage):
      out = _width(_STAGE_WIDTHS[s] * expansion, self.width_multiplier)
      for b in range(num_blocks):
        stride = 2 if s > 0 and b == 0 else 1
        project = b == 0 and (stride != 1 or channels != out)
        block = hk.to_module(_block)(name=f'stage{s}_block{b}')
        x = block(x, is_training, out, stride, project, self)
        channels = out
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
