"""BN-free "modified initialisation" (paper §3.2).

A training-mode forward pass of the network *with* BatchNorm on a batch of
augmented images gives the mean and std of every BN layer's input. BN is then
replaced by a trainable per-channel affine layer set so that, on that batch,
the network computes exactly what the BN network did:

    gamma = gamma0 / std,   beta = -mean * gamma,   std = sqrt(var + eps),

with gamma0 = 0 for the last norm of each residual block and 1 otherwise
(zero_init_last) and BN's initial offset 0. BN and affine layers have the same
parameter trees, so the affine network's parameters run unchanged through a BN
twin of it.

Memory: one pass over the whole batch (4096 images at 224 px in the
1000-epoch config) does not fit on one accelerator. So the affine layers are
calibrated one at a time, in forward order: with layers < k calibrated, the
affine network computes the BN network's activations up to layer k. Each pass
runs the batch in chunks (`chunk_size` images per device) and merges the
per-chunk (count, mean, M2) in float64 (Chan et al.): memory is bounded by the
chunk, the result equals one pass up to rounding, at one forward pass of the
batch per layer (55 for a ResNet-50 with both heads; one compiled program),
once per run.
"""

from typing import Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import parallel
from byol_jax.methods import networks
from byol_jax.models import norms

COMPONENTS = ('encoder', 'projector', 'predictor')


def calibrated_components(model) -> tuple:
  """The components (forward order) whose norm kind is 'affine'."""
  return tuple(c for c in COMPONENTS if model[f'{c}_norm'] == 'affine')


def _is_affine_call(context) -> bool:
  return context.method_name == '__call__' and isinstance(
      context.module, norms.Affine
  )


def _affine_calls(forward, params, state, images, components) -> list:
  """Names of the calibrated affine modules, in the order they run."""
  order = []

  def record(next_f, args, kwargs, context):
    if _is_affine_call(context):
      name = context.module.module_name
      if name.split('/')[0] in components and name not in order:
        order.append(name)
    return next_f(*args, **kwargs)

  def run(p, x):
    with hk.intercept_methods(record):
      return forward.apply(p, state, None, x, True)

  jax.eval_shape(run, params, images[:1])
  return order


def _input_moments(forward, state, names: Sequence[str]):
  """fn(params, images) -> {name: (count, mean [C], M2 [C])} of module inputs.

  count is the number of values per channel (images x positions); M2 the sum
  of squared deviations from this chunk's mean (two-pass, in float32).
  """

  def fn(params, images):
    out = {}

    def capture(next_f, args, kwargs, context):
      name = _is_affine_call(context) and context.module.module_name
      if name in names:
        x = args[0].astype(jnp.float32)
        count = np.prod(x.shape[:-1])
        mean, var = norms.batch_moments(x)  # BN's own, stable moments.
        out[name] = (jnp.float32(count), mean, var * count)
      return next_f(*args, **kwargs)

    with hk.intercept_methods(capture):
      forward.apply(params, state, None, images, True)
    return out

  return fn


def _merge(a, b):
  """Chan et al.'s pairwise merge of (count, mean, M2), in float64."""
  (na, ma, m2a), (nb, mb, m2b) = a, b
  n = na + nb
  delta = mb - ma
  return n, ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n


class _Moments:
  """Input moments of some affine modules over a batch, chunk by chunk."""

  def __init__(self, forward, state, names, devices=None):
    self.devices = list(devices or jax.local_devices())
    fn = _input_moments(forward, state, tuple(names))
    self._pmapped = parallel.device_program(
        fn, axis_name=None, devices=self.devices, in_axes=(None, 0)
    )
    self._single = jax.jit(fn)

  def __call__(self, params, images, chunk_size: Optional[int] = None):
    """{name: (mean, var)} (float64) over all of `images` [B, ...]."""
    images = np.asarray(images)
    ndev = len(self.devices)
    chunk = chunk_size or -(-len(images) // ndev)
    totals = {}
    start = 0
    while start < len(images):
      group = images[start : start + chunk * ndev]
      if len(group) == chunk * ndev:  # one chunk per device, in parallel.
        out = jax.device_get(
            self._pmapped(
                params, group.reshape((ndev, chunk) + group.shape[1:])
            )
        )
        parts = [
            {k: tuple(v[i] for v in vals) for k, vals in out.items()}
            for i in range(ndev)
        ]
      else:  # the remainder, on the first device.
        parts = [
            jax.device_get(
                self._single(params, jax.device_put(group, self.devices[0]))
            )
        ]
      for part in parts:
        for name, (count, mean, m2) in part.items():
          entry = (
              np.float64(count),
              np.asarray(mean, np.float64),
              np.asarray(m2, np.float64),
          )
          totals[name] = (
              entry if name not in totals else _merge(totals[name], entry)
          )
      start += len(group)
    return {k: (mean, m2 / count) for k, (count, mean, m2) in totals.items()}


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
    model: the `model` config (some components with norm 'affine').
    num_classes: classifier outputs (to build the same tree).
    params: the affine network's initial online parameters.
    images: [B, H, W, 3] augmented, normalised images (host or device).
    with_predictor: whether the online network has a predictor (BYOL).
    chunk_size: images per device per forward pass (None: the batch split
      over the devices).
    devices: local devices to spread the chunks over (default: all).
    return_statistics: also return {layer: (mean [C], var [C])} (float64).

  Returns:
    New params: scale = gamma0 / std, offset = -mean * scale at each calibrated
    layer, all else unchanged; (params, statistics) with return_statistics.

  Raises:
    ValueError: no component has norm 'affine'.
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
  eps = norms.BN_EPS  # the BN network's eps.
  new = jax.tree.map(np.asarray, jax.device_get(dict(params)))
  # BN state of non-calibrated components (if any); never updated here.
  _, state = jax.eval_shape(
      lambda: forward.init(jax.random.PRNGKey(0), images[:1], True)
  )
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)
  names = _affine_calls(forward, new, state, images, components)
  # One compiled pass that measures every calibrated layer's input; pass k
  # uses layer k's (earlier layers are calibrated by then, later ones not).
  moments = _Moments(forward, state, names, devices)
  statistics = {}
  for name in names:
    mean, var = statistics[name] = moments(new, images, chunk_size)[name]
    p = new[name]
    scale = p['scale'] / np.sqrt(var + eps)  # gamma0 / std
    new[name] = {
        'scale': scale.astype(np.float32),
        'offset': (p['offset'] - mean * scale).astype(np.float32),
    }
  return (new, statistics) if return_statistics else new


def apply_to_state(
    train_state, model, num_classes, images, chunk_size: Optional[int] = None
):
  """A fresh TrainState with calibrated online params; target a copy of them."""
  params = train_state.online_params
  with_predictor = any(name.startswith('predictor/') for name in params)
  params = calibrate(
      model,
      num_classes,
      params,
      images,
      with_predictor=with_predictor,
      chunk_size=chunk_size,
  )
  target = {
      name: jax.tree.map(jnp.copy, params[name])
      for name in train_state.target_params
  }
  return train_state._replace(online_params=params, target_params=target)
