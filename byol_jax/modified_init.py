"""BN-free "modified initialisation" (paper §3.2): each affine layer computes
what BN did on a batch of augmented images, gamma = gamma0 / sqrt(var + eps),
beta = -mean * gamma; one pass per layer in forward order (55 for a ResNet-50
with both heads, one compiled program), in chunks merged in float64."""

import functools
from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from byol_jax.hosts import parallel
from byol_jax.methods import networks
from byol_jax.models import norms


def calibrated_components(model) -> tuple:
  """The components (forward order) whose norm kind is 'affine'."""
  components = ('encoder', 'projector', 'predictor')
  return tuple(c for c in components if model[f'{c}_norm'] == 'affine')


def _input_moments(forward, state, order: list):
  """fn(params, images) -> {affine layer: (count, mean, M2)} of its input."""

  def fn(params, images):
    out = {}

    def capture(next_f, args, kwargs, context):
      module = context.module
      if isinstance(module, norms.Affine) and context.method_name == '__call__':
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


def calibrate(
    model,
    num_classes: int,
    params: hk.Params,
    images,
    *,
    chunk_size: Optional[int] = None,
    devices=None,
    return_statistics: bool = False,
):
  """`params` with every affine layer set from the batch's statistics (§3.2).

  Args:
    model: the `model` config (norm 'affine' somewhere).
    num_classes: classifier outputs (to build the same tree).
    params: the affine network's initial online parameters (a predictor's too).
    images: [B, H, W, 3] augmented, normalised images (host or device).
    chunk_size: images per device per pass (None: the batch over devices).
    devices: local devices (default: all).
    return_statistics: also return {layer: (mean [C], var [C])} (float64).

  Returns:
    New params: scale = gamma0 / std, offset = -mean * scale at each
    calibrated layer; (params, statistics) with return_statistics.
  """
  predictor = any(name.startswith('predictor/') for name in params)
  forward = networks.make_forward(
      model, num_classes, with_predictor=predictor, with_classifier=False
  )
  images = np.asarray(images)
  new = jax.tree.map(np.asarray, jax.device_get(dict(params)))
  # BN state of non-calibrated components (if any); never updated here.
  _, state = jax.eval_shape(
      lambda: forward.init(jax.random.PRNGKey(0), images[:1], True)
  )
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)
  order = []
  fn = _input_moments(forward, state, order)
  jax.eval_shape(fn, new, images[:1])
  devices = list(devices or jax.local_devices())
  n, single = len(devices), jax.jit(fn)
  pmapped = parallel.device_program(
      fn, axis_name=None, devices=devices, in_axes=(None, 0)
  )
  chunk = chunk_size or -(-len(images) // n)

  def moments(params):  # {name: (count, mean, M2)} of all images, float64.
    parts = []
    for start in range(0, len(images), chunk * n):
      group = images[start : start + chunk * n]
      if len(group) == chunk * n:  # one chunk per device.
        out = pmapped(params, group.reshape((n, chunk) + group.shape[1:]))
        out = jax.device_get(out)
        parts += [jax.tree.map(lambda v: v[i], out) for i in range(n)]
      else:  # the remainder, on the first device.
        group = jax.device_put(group, devices[0])
        parts.append(jax.device_get(single(params, group)))
    parts = jax.tree.map(lambda v: np.asarray(v, np.float64), parts)
    merge = lambda a, b: {k: _merge(a[k], b[k]) for k in a}
    return functools.reduce(merge, parts)

  # One compiled pass measures every calibrated layer's input; pass k uses
  # layer k's (earlier layers are calibrated by then, later ones not).
  statistics = {}
  for name in order:
    count, mean, m2 = moments(new)[name]
    mean, var = statistics[name] = mean, m2 / count
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
  params = calibrate(model, num_classes, params, images, chunk_size=chunk_size)
  target = {name: params[name] for name in train_state.target_params}
  return train_state._replace(
      online_params=params, target_params=jax.tree.map(jnp.copy, target)
  )
