"""BN-free "modified initialisation" (paper §3.2).

The mean and std of every BN layer's input, on a batch of augmented images,
set the trainable per-channel affine layer that replaces it so that on that
batch it computes what BN did: gamma = gamma0 / std, beta = -mean * gamma,
std = sqrt(var + eps); gamma0 = 0 for each residual block's last norm, 1
elsewhere (zero_init_last). Memory: the whole batch (4096 images at 224 px)
does not fit on one accelerator, so the layers are calibrated one at a time
in forward order (with layers < k calibrated, the affine network computes
the BN network's activations up to layer k), each pass in chunks of
`chunk_size` images per device merged in float64 (Chan et al.): memory
bounded by a chunk, one pass's result up to rounding, one forward pass per
layer (55 for a ResNet-50 with both heads, one compiled program), once a run.
"""

from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from byol_jax.hosts import parallel
from byol_jax.methods import networks
from byol_jax.models import norms

COMPONENTS = ('encoder', 'projector', 'predictor')


def calibrated_components(model) -> tuple:
  """The components (forward order) whose norm kind is 'affine'."""
  return tuple(c for c in COMPONENTS if model[f'{c}_norm'] == 'affine')


def _input_moments(forward, state, components, order: list):
  """fn(params, images) -> {name: (count, mean [C], M2 [C])} of affine inputs.

  count: values per channel; M2: sum of squared deviations from the mean (BN's
  two-pass batch_moments). Tracing fn lists the names in call order in `order`.
  """

  def fn(params, images):
    out = {}

    def capture(next_f, args, kwargs, context):
      module = context.module
      if (
          context.method_name == '__call__'
          and isinstance(module, norms.Affine)
          and module.module_name.split('/')[0] in components
      ):
        x = args[0].astype(jnp.float32)
        count = np.prod(x.shape[:-1])
        mean, var = norms.batch_moments(x)
        out[module.module_name] = (jnp.float32(count), mean, var * count)
      return next_f(*args, **kwargs)

    with hk.intercept_methods(capture):
      forward.apply(params, state, None, images, True)
    order[:] = out
    return out

  return fn


def _merge(a, b):
  """Chan et al.'s pairwise merge of (count, mean, M2), in float64."""
  (na, ma, m2a), (nb, mb, m2b) = a, b
  n = na + nb
  delta = mb - ma
  return n, ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n


def _chunked(fn, devices):
  """(params, images, chunk_size) -> {name: (mean, var)} (float64) of `fn`.

  Over all of `images`: one chunk per device at a time, the remainder on the
  first device.
  """
  pmapped = parallel.device_program(
      fn, axis_name=None, devices=devices, in_axes=(None, 0)
  )
  single, n = jax.jit(fn), len(devices)

  def moments(params, images, chunk_size):
    chunk = chunk_size or -(-len(images) // n)
    total = None
    for start in range(0, len(images), chunk * n):
      group = images[start : start + chunk * n]
      if len(group) == chunk * n:
        out = pmapped(params, group.reshape((n, chunk) + group.shape[1:]))
        out = jax.device_get(out)
        parts = [jax.tree.map(lambda v: v[i], out) for i in range(n)]
      else:
        group = jax.device_put(group, devices[0])
        parts = [jax.device_get(single(params, group))]
      for part in parts:
        part = jax.tree.map(lambda v: np.asarray(v, np.float64), part)
        if total is not None:
          part = {k: _merge(total[k], v) for k, v in part.items()}
        total = part
    return {k: (mean, m2 / count) for k, (count, mean, m2) in total.items()}

  return moments


def calibrate(
    model,
    num_classes: int,
    params: hk.Params,
    images,
    *,
    with_predictor: bool = True,
    chunk_size: Optional[int] = None,
    devices=None,
    return_statistics: bool = False,
):
  """`params` with every affine layer set from the batch's statistics (§3.2).

  Args:
    model: the `model` config (norm 'affine' somewhere, else ValueError).
    num_classes: classifier outputs (to build the same tree).
    params: the affine network's initial online parameters.
    images: [B, H, W, 3] augmented, normalised images (host or device).
    with_predictor: whether the online network has a predictor (BYOL).
    chunk_size: images per device per pass (None: the batch over devices).
    devices: local devices to spread the chunks over (default: all).
    return_statistics: also return {layer: (mean [C], var [C])} (float64).

  Returns:
    New params: scale = gamma0 / std, offset = -mean * scale at each
    calibrated layer; (params, statistics) with return_statistics.
  """
  components = calibrated_components(model)
  if not components:
    raise ValueError(
        'modified init needs at least one component with norm '
        "'affine' (model.encoder_norm=affine, paper §3.2)."
    )
  forward = networks.make_forward(
      model,
      num_classes,
      with_predictor=with_predictor,
      with_classifier=False,
      axis_name=None,
  )
  images = np.asarray(images)
  new = jax.tree.map(np.asarray, jax.device_get(dict(params)))
  # BN state of non-calibrated components (if any); never updated here.
  _, state = jax.eval_shape(
      lambda: forward.init(jax.random.PRNGKey(0), images[:1], True)
  )
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)
  order = []
  fn = _input_moments(forward, state, components, order)
  jax.eval_shape(fn, new, images[:1])
  # One compiled pass measures every calibrated layer's input; pass k uses
  # layer k's (earlier layers are calibrated by then, later ones not).
  moments = _chunked(fn, list(devices or jax.local_devices()))
  statistics = {}
  for name in order:
    mean, var = statistics[name] = moments(new, images, chunk_size)[name]
    scale = new[name]['scale'] / np.sqrt(var + norms.BN_EPS)  # gamma0 / std
    offset = new[name]['offset'] - mean * scale
    new[name] = {
        'scale': scale.astype(np.float32),
        'offset': offset.astype(np.float32),
    }
  return (new, statistics) if return_statistics else new


def apply_to_state(
    train_state, model, num_classes, images, chunk_size: Optional[int] = None
):
  """A fresh TrainState with calibrated online params; target a copy of them."""
  params = train_state.online_params
  params = calibrate(
      model,
      num_classes,
      params,
      images,
      with_predictor=any(name.startswith('predictor/') for name in params),
      chunk_size=chunk_size,
  )
  target = {name: params[name] for name in train_state.target_params}
  return train_state._replace(
      online_params=params, target_params=jax.tree.map(jnp.copy, target)
  )
