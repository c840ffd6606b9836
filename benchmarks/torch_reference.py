r"""The BYOL training step in PyTorch, as a careful PyTorch user writes it.

A reference for benchmarks/throughput.py: the same step on the same GPU and
batch, so our images/s can be read beside what PyTorch gives. One step:

  * BYOL's augmentation of both views on the GPU (flip; colour jitter of
    brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1 in a random order
    per image, p 0.8; grayscale p 0.2; Gaussian blur of 23 taps at 224 px,
    sigma U[0.1, 2], p 1.0 / 0.1; solarisation p 0 / 0.2; ImageNet
    mean/std), as byol_jax/augment.py does inside our step;
  * online network: torchvision ResNet-50 (`fc` removed, 2048-d features),
    projector and predictor MLPs Linear(4096) -> BatchNorm1d -> ReLU ->
    Linear(256, no bias) as the official BYOL code, and a linear classifier
    on the detached features (our online monitor); each view its own
    forward (BatchNorm statistics per view, as ours and the official code);
  * target network: a copy of encoder + projector, forward only, its own
    BatchNorm running statistics;
  * loss: symmetric 2 - 2 cos(q_online(v1), z_target(v2)) + swapped, plus
    the classifier's cross-entropy;
  * optimiser: LARS in the official BYOL order (weight decay -> trust ratio
    eta ||w|| / ||g|| -> momentum 0.9 -> learning rate), biases and
    normalisation parameters excluded from weight decay and trust ratio;
    our optimiser (byol_jax/optim.py);
  * target EMA: target <- tau target + (1 - tau) online (torch._foreach_lerp_).

Performance settings: bfloat16 autocast, channels_last, cuDNN benchmark,
TF32 matmuls, and torch.compile of the forward + loss (backward compiled
through AOTAutograd); LARS and the EMA use fused foreach kernels. Where
torch.compile fails, the row falls back to eager and says so. Every row is
timed eager first, then compiled, so a row always has a number.

`--norm gn_ws` swaps every BatchNorm2d for GroupNorm(16) and every
convolution for a weight-standardised one (the paper's GN+WS; the MLP heads
keep GroupNorm as our gn_ws preset). Timing as throughput.py: a synthetic
device-resident batch of two views in [0, 1], `--warmup` untimed and
`--steps` timed steps each ended by torch.cuda.synchronize, images/s =
batch / median step time.

    python -m benchmarks.torch_reference --per_device_batch 128,256
    # tiny, on a CPU (eager):
    python -m benchmarks.torch_reference --depth 18 --image_size 32 \
        --per_device_batch 4 --hidden 64 --out_dim 16 --dtype float32 \
        --steps 2 --warmup 1 --no_write

Without torch the command prints "torch not installed" and exits 0.
"""

import importlib.util
import json
import shlex
import sys
import time
import traceback
from typing import Optional

from absl import flags
import numpy as np

from benchmarks import _cli
from benchmarks import _results

NOT_INSTALLED = 'torch not installed'
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)
# (blur probability, solarisation probability) of view 1 and view 2 (BYOL).
VIEW_PROBS = {1: (1.0, 0.0), 2: (0.1, 0.2)}


def torch_missing_reason() -> Optional[str]:
  """None when torch and torchvision can be imported, else the reason.

  Looks for the packages without importing them (importing torch costs
  seconds and initialises CUDA state).
  """
  for name in ('torch', 'torchvision'):
    if importlib.util.find_spec(name) is None:
      return NOT_INSTALLED if name == 'torch' else 'torchvision not installed'
  return None


def _rgb_to_hsv(x):
  """[B, 3, H, W] RGB in [0, 1] -> HSV in [0, 1] (as dm_pix.rgb_to_hsv)."""
  import torch  # pylint: disable=g-import-not-at-top

  r, g, b = x.unbind(1)
  maxc = torch.maximum(torch.maximum(r, g), b)
  minc = torch.minimum(torch.minimum(r, g), b)
  delta = maxc - minc
  v = maxc
  s = torch.where(
      maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc)
  )
  safe = delta.clamp_min(1e-12)
  rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
  h = torch.where(
      maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc)
  )
  h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
  return torch.stack([h, s, v], 1)


def _hsv_to_rgb(x):
  """[B, 3, H, W] HSV in [0, 1] -> RGB (as dm_pix.hsv_to_rgb)."""
  import torch  # pylint: disable=g-import-not-at-top

  h, s, v = x.unbind(1)
  h6 = (h % 1.0) * 6.0
  k = torch.stack([(5.0 + h6) % 6.0, (3.0 + h6) % 6.0, (1.0 + h6) % 6.0], 1)
  f = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
  return v[:, None] - (v * s)[:, None] * f


def augment(x, view: int):
  """BYOL's augmentation of one view, on the tensors' device.

  Args:
    x: [B, 3, H, W] float32 in [0, 1].
    view: 1 or 2 (blur / solarisation probabilities, VIEW_PROBS).

  Returns:
    [B, 3, H, W] float32, normalised with the ImageNet mean and std.
  """
  import torch  # pylint: disable=g-import-not-at-top

  b, _, side, _ = x.shape
  dev = x.device
  blur_p, solarize_p = VIEW_PROBS[view]
  u = torch.rand(b, 12, device=dev)
  per = lambda t: t[:, None, None, None]
  x = torch.where(per(u[:, 0] < 0.5), x.flip(3), x)
  # Colour jitter: four stages, each image applies one op per stage in its
  # own random order (argsort of uniforms).
  order = torch.argsort(torch.rand(b, 4, device=dev), 1)
  bright = (u[:, 1] * 2 - 1) * 0.4
  contrast = 1 + (u[:, 2] * 2 - 1) * 0.4
  sat = 1 + (u[:, 3] * 2 - 1) * 0.2
  hue = (u[:, 4] * 2 - 1) * 0.1
  y = x
  for i in range(4):
    op = order[:, i]
    mean = y.mean((2, 3), keepdim=True)
    is_b, is_c = per(op == 0), per(op == 1)
    a = torch.where(is_c, per(contrast), torch.ones_like(per(contrast)))
    shift = torch.where(
        is_b,
        per(bright),
        torch.where(is_c, (1 - per(contrast)) * mean, torch.zeros_like(mean)),
    )
    affine = (a * y + shift).clamp(0, 1)
    hsv = _rgb_to_hsv(y)
    s_f = torch.where(op == 2, sat, torch.ones_like(sat))[:, None, None]
    h_f = torch.where(op == 3, hue, torch.zeros_like(hue))[:, None, None]
    hsv = torch.stack(
        [(hsv[:, 0] + h_f) % 1.0, (hsv[:, 1] * s_f).clamp(0, 1), hsv[:, 2]], 1
    )
    y = torch.where(per(op < 2), affine, _hsv_to_rgb(hsv).clamp(0, 1))
  x = torch.where(per(u[:, 5] < 0.8), y, x)
  gray = (0.2989 * x[:, 0] + 0.5870 * x[:, 1] + 0.1140 * x[:, 2])[:, None]
  x = torch.where(per(u[:, 6] < 0.2), gray.expand_as(x), x)
  if blur_p > 0:
    radius = max(1, int(side / 10 / 2))
    taps = torch.arange(-radius, radius + 1, device=dev, dtype=torch.float32)
    sigma = 0.1 + u[:, 7] * 1.9
    w = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None] ** 2))
    w = w / w.sum(1, keepdim=True)  # [B, taps]
    # Separable per-image kernels as one grouped convolution each way.
    c = x.shape[1]
    kernel = w.repeat_interleave(c, 0)[:, None]  # [B*C, 1, taps]
    flat = x.reshape(1, b * c, side, -1)
    flat = torch.nn.functional.conv2d(
        flat, kernel[:, :, None, :], padding=(0, radius), groups=b * c
    )
    flat = torch.nn.functional.conv2d(
        flat, kernel[:, :, :, None], padding=(radius, 0), groups=b * c
    )
    x = torch.where(per(u[:, 8] < blur_p), flat.reshape(x.shape), x)
  if solarize_p > 0:
    x = torch.where(
        per(u[:, 9] < solarize_p), torch.where(x < 0.5, x, 1.0 - x), x
    )
  x = x.clamp(0, 1)
  mean = torch.tensor(MEAN_RGB, device=dev)[None, :, None, None]
  std = torch.tensor(STDDEV_RGB, device=dev)[None, :, None, None]
  return (x - mean) / std


def _ws_conv_class():
  import torch  # pylint: disable=g-import-not-at-top

  class WSConv2d(torch.nn.Conv2d):
    """Conv2d with Weight Standardisation (per output channel, eps 1e-4)."""

    def forward(self, x):
      w = self.weight
      mean = w.mean((1, 2, 3), keepdim=True)
      var = w.var((1, 2, 3), keepdim=True, unbiased=False)
      w = (w - mean) * torch.rsqrt(var + 1e-4)
      return self._conv_forward(x, w, self.bias)

  return WSConv2d


def _to_ws(module):
  """Replaces every Conv2d under `module` by a weight-standardised one."""
  import torch  # pylint: disable=g-import-not-at-top

  ws = _ws_conv_class()
  for name, child in module.named_children():
    if isinstance(child, torch.nn.Conv2d):
      new = ws(
          child.in_channels,
          child.out_channels,
          child.kernel_size,
          child.stride,
          child.padding,
          bias=child.bias is not None,
      )
      setattr(module, name, new)
    else:
      _to_ws(child)


def build_networks(
    depth: int, norm: str, num_classes: int, hidden: int, out_dim: int
):
  """Online (encoder, projector, predictor, classifier) and target modules.

  Args:
    depth: torchvision ResNet depth (18, 34, 50, 101, 152).
    norm: 'bn' (BatchNorm everywhere) or 'gn_ws' (GroupNorm(16) + weight
      standardised convolutions in the encoder, GroupNorm(16) in the heads).
    num_classes: outputs of the online classifier.
    hidden: MLP hidden width (BYOL: 4096).
    out_dim: projection width (BYOL: 256).

  Returns:
    (online: nn.ModuleDict with encoder/projector/predictor/classifier,
    target: nn.ModuleDict with encoder/projector).
  """
  import copy  # pylint: disable=g-import-not-at-top

  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  nn = torch.nn
  if norm not in ('bn', 'gn_ws'):
    raise ValueError(f'norm={norm!r}: use bn or gn_ws')
  kwargs = {} if norm == 'bn' else {'norm_layer': lambda c: nn.GroupNorm(16, c)}
  encoder = getattr(torchvision.models, f'resnet{depth}')(
      weights=None, **kwargs
  )
  features = encoder.fc.in_features
  encoder.fc = nn.Identity()
  if norm == 'gn_ws':
    _to_ws(encoder)
  head_norm = (
      (lambda c: nn.BatchNorm1d(c))
      if norm == 'bn'
      else (lambda c: nn.GroupNorm(16, c))
  )

  def mlp(d_in):
    return nn.Sequential(
        nn.Linear(d_in, hidden),
        head_norm(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim, bias=False),
    )

  online = nn.ModuleDict(
      dict(
          encoder=encoder,
          projector=mlp(features),
          predictor=mlp(out_dim),
          classifier=nn.Linear(features, num_classes),
      )
  )
  target = nn.ModuleDict(
      dict(
          encoder=copy.deepcopy(online['encoder']),
          projector=copy.deepcopy(online['projector']),
      )
  )
  for p in target.parameters():
    p.requires_grad_(False)
  return online, target


class LARS:
  """LARS as the official BYOL optimiser, on fused foreach kernels.

  For each parameter p with gradient g (rank > 1 only: weight decay and
  trust ratio): g += wd p; g *= eta ||p|| / ||g|| (1 where either norm is
  0); then for all: m = momentum m + g; p -= lr m.
  """

  def __init__(
      self,
      params,
      lr: float,
      weight_decay: float = 1.5e-6,
      momentum: float = 0.9,
      eta: float = 1e-3,
  ):
    """Args:
    params: the online parameters (a list of tensors).
    lr: learning rate (constant here: the schedule does not change the
      step's cost).
    weight_decay: decoupled-from-nothing L2 term, as the official code.
    momentum: heavy-ball momentum.
    eta: trust coefficient.
    """
    import torch  # pylint: disable=g-import-not-at-top

    self.params = [p for p in params if p.requires_grad]
    self.adapt = [p for p in self.params if p.ndim > 1]
    self.plain = [p for p in self.params if p.ndim <= 1]
    self.lr, self.wd, self.momentum, self.eta = lr, weight_decay, momentum, eta
    self.buf = {id(p): torch.zeros_like(p) for p in self.params}

  def step(self):
    """One update from the parameters' .grad (then cleared)."""
    import torch  # pylint: disable=g-import-not-at-top

    with torch.no_grad():
      ps = [p for p in self.adapt if p.grad is not None]
      if ps:
        gs = [p.grad for p in ps]
        torch._foreach_add_(gs, ps, alpha=self.wd)
        pn = torch.stack(torch._foreach_norm(ps))
        gn = torch.stack(torch._foreach_norm(gs))
        trust = torch.where(
            (pn > 0) & (gn > 0),
            self.eta * pn / gn.clamp_min(1e-30),
            torch.ones_like(pn),
        )
        torch._foreach_mul_(gs, list(trust.unbind(0)))
      params = [p for p in self.params if p.grad is not None]
      grads = [p.grad for p in params]
      bufs = [self.buf[id(p)] for p in params]
      torch._foreach_mul_(bufs, self.momentum)
      torch._foreach_add_(bufs, grads)
      torch._foreach_add_(params, bufs, alpha=-self.lr)
      for p in params:
        p.grad = None


def run_row(spec: dict, log=print) -> dict:
  """Times the BYOL step of one (norm, batch) row in this process.

  Args:
    spec: depth, norm ('bn' | 'gn_ws'), image_size (px), per_device_batch,
      dtype ('bfloat16' autocast | 'float32'), num_classes, hidden, out_dim,
      steps (timed), warmup (untimed), compile ('auto': on CUDA only, 'on',
      'off'), augment (bool).
    log: called with each progress line and with the partial row (a dict)
      once the eager timing is done (the suite records it at once).

  Returns:
    The row: eager_images_per_sec, eager step times; where compiled:
    compiled_images_per_sec, compile_time_s (the first compiled step's wall
    time: tracing, compiling and one step); images_per_sec = the better of
    the two with `mode` naming it; peak_memory_bytes (CUDA allocator's
    max_memory_allocated over the whole row); compile_note where compile
    was not used or failed. Times in seconds.

  Raises:
    ValueError: an unknown norm or dtype.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  if spec['dtype'] not in ('bfloat16', 'float32'):
    raise ValueError(f'dtype={spec["dtype"]!r}: use bfloat16 or float32')
  cuda = torch.cuda.is_available()
  dev = torch.device('cuda' if cuda else 'cpu')
  torch.manual_seed(0)
  if cuda:
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  online, target = build_networks(
      spec['depth'],
      spec['norm'],
      spec['num_classes'],
      spec['hidden'],
      spec['out_dim'],
  )
  online = online.to(dev, memory_format=torch.channels_last).train()
  target = target.to(dev, memory_format=torch.channels_last).train()
  batch = spec['per_device_batch']
  lr = 0.2 * batch / 256
  opt = LARS(list(online.parameters()), lr=lr)
  online_p = [
      p
      for n, p in online.named_parameters()
      if n.split('.')[0] in ('encoder', 'projector')
  ]
  target_p = list(target.parameters())
  assert len(online_p) == len(target_p)
  tau = 0.996
  shape = (batch, 3, spec['image_size'], spec['image_size'])
  gen = torch.Generator(device=dev).manual_seed(1)
  views = [
      torch.rand(shape, device=dev, generator=gen).contiguous(
          memory_format=torch.channels_last
      )
      for _ in range(2)
  ]
  labels = torch.randint(
      0, spec['num_classes'], (batch,), device=dev, generator=gen
  )
  amp = (
      torch.autocast(dev.type, dtype=torch.bfloat16)
      if spec['dtype'] == 'bfloat16'
      else torch.autocast(dev.type, enabled=False)
  )
  do_augment = spec.get('augment', True)

  def regression(p, z):
    p = torch.nn.functional.normalize(p.float(), dim=-1)
    z = torch.nn.functional.normalize(z.float(), dim=-1)
    return (2 - 2 * (p * z).sum(-1)).mean()

  def forward_loss(v1, v2, y):
    with amp:
      if do_augment:
        v1, v2 = augment(v1, 1), augment(v2, 2)
      v1 = v1.contiguous(memory_format=torch.channels_last)
      v2 = v2.contiguous(memory_format=torch.channels_last)
      r1, r2 = online['encoder'](v1), online['encoder'](v2)
      q1 = online['predictor'](online['projector'](r1))
      q2 = online['predictor'](online['projector'](r2))
      with torch.no_grad():
        z1 = target['projector'](target['encoder'](v1))
        z2 = target['projector'](target['encoder'](v2))
      logits = online['classifier'](r1.detach())
      loss = regression(q1, z2) + regression(q2, z1)
      ce = torch.nn.functional.cross_entropy(logits.float(), y)
    return loss + ce

  def make_step(fwd):
    def step():
      loss = fwd(views[0], views[1], labels)
      loss.backward()
      opt.step()
      with torch.no_grad():
        torch._foreach_lerp_(target_p, online_p, 1.0 - tau)
      return loss

    return step

  def sync():
    if cuda:
      torch.cuda.synchronize()

  def time_steps(step):
    first = time.perf_counter()
    loss = step()
    sync()
    first = time.perf_counter() - first
    for _ in range(spec['warmup']):
      step()
    sync()
    times = []
    for _ in range(spec['steps']):
      start = time.perf_counter()
      loss = step()
      sync()
      times.append(time.perf_counter() - start)
    p10, med, p90 = (float(t) for t in np.percentile(times, [10, 50, 90]))
    return dict(
        first_step_s=first,
        median=med,
        p10=p10,
        p90=p90,
        loss=float(loss.detach()),
    )

  if cuda:
    torch.cuda.reset_peak_memory_stats()
  row = dict(
      framework='pytorch',
      torch_version=torch.__version__,
      torchvision_version=torchvision.__version__,
      cuda_version=torch.version.cuda,
      device=(torch.cuda.get_device_name() if cuda else 'cpu'),
      method='byol',
      norm=spec['norm'],
      depth=spec['depth'],
      image_size=spec['image_size'],
      dtype=spec['dtype'],
      per_device_batch=batch,
      global_batch=batch,
      num_devices=1,
      num_classes=spec['num_classes'],
      mlp_hidden=spec['hidden'],
      mlp_out=spec['out_dim'],
      augment=do_augment,
      channels_last=True,
      optimizer='LARS (official BYOL order)',
      steps_timed=spec['steps'],
      warmup_steps=spec['warmup'],
  )
  eager = time_steps(make_step(forward_loss))
  row.update(
      eager_images_per_sec=batch / eager['median'],
      eager_step_time_median_s=eager['median'],
      eager_step_time_p10_s=eager['p10'],
      eager_step_time_p90_s=eager['p90'],
      eager_first_step_s=eager['first_step_s'],
      images_per_sec=batch / eager['median'],
      mode='eager',
      step_time_median_s=eager['median'],
      loss_last_step=eager['loss'],
  )
  want = spec.get('compile', 'auto')
  if want == 'off' or (want == 'auto' and not cuda):
    row['compile_note'] = (
        'torch.compile not used (--compile off)'
        if want == 'off'
        else 'torch.compile not tried on ' 'CPU (--compile auto): eager only'
    )
  else:
    row['compile_note'] = 'pending: compiling (killed here if out of time)'
  if cuda:
    row['peak_memory_bytes'] = torch.cuda.max_memory_allocated()
  log(dict(row))
  if row['compile_note'].startswith('pending'):
    try:
      compiled = torch.compile(forward_loss)
      result = time_steps(make_step(compiled))
    except Exception as e:  # pylint: disable=broad-except
      row['compile_note'] = (
          'torch.compile failed, eager numbers: '
          f'{type(e).__name__}: {str(e)[:300]}'
      )
      log(traceback.format_exc()[-2000:])
    else:
      del row['compile_note']
      row.update(
          compiled_images_per_sec=batch / result['median'],
          compiled_step_time_median_s=result['median'],
          compiled_step_time_p10_s=result['p10'],
          compiled_step_time_p90_s=result['p90'],
          compile_time_s=result['first_step_s'],
      )
      if result['median'] < eager['median']:
        row.update(
            images_per_sec=batch / result['median'],
            mode='compiled',
            step_time_median_s=result['median'],
            loss_last_step=result['loss'],
        )
  if cuda:
    row['peak_memory_bytes'] = torch.cuda.max_memory_allocated()
  return row


def define_flags(flag_values) -> None:
  """Defines the command line's flags on flag_values (see _cli)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_integer('depth', 50, 'torchvision ResNet depth', **fv)
  _cli.define_csv('norm', ['bn'], 'comma-separated: bn,gn_ws', **fv)
  flags.DEFINE_integer('image_size', 224, 'image side in pixels', **fv)
  _cli.define_csv(
      'per_device_batch', [128, 256], 'comma-separated', kind=int, **fv
  )
  flags.DEFINE_string(
      'dtype', 'bfloat16', 'bfloat16 (autocast) | float32', **fv
  )
  flags.DEFINE_integer('num_classes', 1000, 'online classifier outputs', **fv)
  flags.DEFINE_integer('hidden', 4096, 'MLP hidden width', **fv)
  flags.DEFINE_integer('out_dim', 256, 'projection width', **fv)
  flags.DEFINE_integer('steps', 20, 'timed steps', **fv)
  flags.DEFINE_integer('warmup', 3, 'untimed steps', **fv)
  flags.DEFINE_enum(
      'compile',
      'auto',
      ['auto', 'on', 'off'],
      'torch.compile: auto = on CUDA only',
      **fv,
  )
  flags.DEFINE_bool(
      'no_augment', False, 'leave BYOL augmentation out of the step', **fv
  )
  flags.DEFINE_string(
      'jsonl',
      None,
      'append each row (and the eager ' 'partial row) to this file',
      **fv,
  )
  flags.DEFINE_string(
      'out', str(_results.RESULTS_DIR), 'folder of the results file', **fv
  )
  flags.DEFINE_bool('no_write', False, 'write no results file', **fv)


def parse_args(argv):
  """The command line (see the module docstring), on fresh FlagValues.

  Args:
    argv: arguments without the program name.

  Returns:
    The parsed flags; a bad command line prints one line and exits with
    code 2.
  """
  return _cli.parse(define_flags, argv, program='benchmarks.torch_reference')


def row_specs(args) -> list:
  """One spec per (norm, per-device batch) of a command line."""
  return [
      dict(
          depth=args.depth,
          norm=norm,
          image_size=args.image_size,
          per_device_batch=batch,
          dtype=args.dtype,
          num_classes=args.num_classes,
          hidden=args.hidden,
          out_dim=args.out_dim,
          steps=args.steps,
          warmup=args.warmup,
          compile=args.compile,
          augment=not args.no_augment,
      )
      for norm in args.norm
      for batch in args.per_device_batch
  ]


def main(argv=None) -> dict:
  """Times every row; writes the results file unless --no_write.

  Args:
    argv: command-line arguments (default sys.argv[1:]).

  Returns:
    {'benchmark', 'device', 'date', 'command', 'rows'}; rows hold
    {'skipped': 'torch not installed'} where torch is absent.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  return run(parse_args(argv), argv)


def run(args, argv) -> dict:
  """main's body: args the parsed flags, argv the command line behind them."""
  command = ' '.join(
      ['python -m benchmarks.torch_reference'] + [shlex.quote(a) for a in argv]
  )

  def record(row):
    if args.jsonl:
      with open(args.jsonl, 'a') as f:
        f.write(json.dumps(row) + '\n')

  missing = torch_missing_reason()
  if missing:
    print(missing, flush=True)
    record({'skipped': missing})
    return dict(
        benchmark='torch_reference',
        command=command,
        rows=[{'skipped': missing}],
    )
  rows = []
  for spec in row_specs(args):
    print(
        f'pytorch {spec["norm"]} {spec["dtype"]} batch '
        f'{spec["per_device_batch"]} ...',
        flush=True,
    )

    def log(item):
      if isinstance(item, dict):
        record(dict(item, partial=True))
        print(f'  eager {item["eager_images_per_sec"]:.1f} img/s', flush=True)
      else:
        print(item, flush=True)

    try:
      row = run_row(spec, log)
    except Exception as e:  # pylint: disable=broad-except
      # e.g. CUDA out of memory at a big batch: record it, go on.
      row = dict(spec, error=f'{type(e).__name__}: {e}'[-2000:])
      print(f'  failed: {row["error"]}', file=sys.stderr, flush=True)
    else:
      print(
          f'  {row["images_per_sec"]:.1f} img/s ({row["mode"]})'
          + (f'; {row["compile_note"]}' if 'compile_note' in row else ''),
          flush=True,
      )
    record(row)
    rows.append(row)
  done = [r for r in rows if 'error' not in r]
  device = done[0]['device'] if done else 'unknown'
  result = dict(
      benchmark='torch_reference',
      device=device,
      date=_results.today(),
      command=command,
      python_version=sys.version.split()[0],
      rows=rows,
  )
  if not args.no_write and done:
    slug = (
        _results.device_slug('cpu', 'cpu', 1)
        if device == 'cpu'
        else _results.device_slug('gpu', device, 1)
    )
    path = _results.results_path(
        'torch_reference', slug, result['date'], args.out
    )
    print(f'wrote {_results.write_json(path, result)}')
  return result


if __name__ == '__main__':
  _cli.main_run(define_flags, run)
