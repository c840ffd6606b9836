"""A run's pre-trained online encoder (the one the paper evaluates, BYOL §3.1,
App. C.1) in inference mode: `load_encoder(workdir)(images) -> [N, D]`.
"""

import dataclasses
import functools
from typing import Any, Callable

from etils import epath
import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections

from byol_jax import augment
from byol_jax import experiment
from byol_jax.methods import networks
from byol_jax.results import runs
from byol_jax.training import checkpointing
from byol_jax.training import resume
from byol_jax.training import workdir as workdir_lib

_RUN_HINT = (
    'run a pre-training first: python -m byol_jax.main '
    '--config=experiments/quickstart.py --workdir={workdir}'
)


_encoder_part = functools.partial(networks.restrict, modules=('encoder',))


def encoder_apply(config) -> Callable[[Any, Any, jax.Array], jax.Array]:
  """Frozen, jit-able fn(params, state, images [N, H, W, 3] in [0, 1]) -> [N, D]
  (normalised here as in pre-training; BN in inference mode)."""
  networks.validate_model_config(config.model)
  transformed = hk.transform_with_state(
      lambda x, is_training: networks.make_encoder(config.model)(x, is_training)
  )

  def apply(params, state, images):
    params, state = _encoder_part(params), _encoder_part(state)
    images = augment.normalize(images)
    return transformed.apply(params, state, None, images, is_training=False)[0]

  return apply


@functools.lru_cache(maxsize=2)
def _jitted_init(key: ml_collections.FrozenConfigDict, num_classes: int):
  # Jitted: one compilation, not one per op (hosts other than 0 miss the
  # compilation cache); bit-equal to the eager init (GN+WS and BN, CPU).
  objects = experiment.init_objects(ml_collections.ConfigDict(key), num_classes)
  return jax.jit(functools.partial(experiment.init_train_state, *objects))


def initial_train_state(config, num_classes: int) -> experiment.TrainState:
  """Pre-training's TrainState at step 0 for config.seed (before §3.2)."""
  init = _jitted_init(ml_collections.FrozenConfigDict(config), num_classes)
  return init(jax.random.PRNGKey(config.seed), experiment.sample_images(config))


def random_encoder(config, num_classes: int):
  """Host (params, state) of initial_train_state's encoder (random baseline)."""
  state = initial_train_state(config, num_classes)
  return jax.device_get(
      tuple(map(_encoder_part, (state.online_params, state.online_state)))
  )


@dataclasses.dataclass
class Pretrained:
  """A run's config, online encoder (+ classifier) params, state and step."""

  config: ml_collections.ConfigDict
  params: Any
  state: Any
  step: int
  workdir: str


def saved_config(workdir) -> ml_collections.ConfigDict:
  """WORKDIR/config.json (resume.from_saved); a clear error if absent."""
  workdir = epath.Path(workdir)
  path = workdir_lib.config_path(workdir)
  hint = _RUN_HINT.format(workdir=workdir)
  if not workdir.exists():
    raise FileNotFoundError(
        f'{workdir} does not exist: expected a pre-training workdir holding '
        f'{workdir_lib.CONFIG} and {workdir_lib.CHECKPOINTS}/; {hint}'
    )
  if (saved := runs.read_json(path)) is None:
    raise FileNotFoundError(
        f'{path} not found: {workdir} is not a pre-training workdir (the run '
        f'writes {workdir_lib.CONFIG} when it starts); {hint}'
    )
  if 'derived' not in saved:
    raise ValueError(
        f'{path} has no derived section: an older version of byol_jax wrote '
        f'{workdir}; read it with that version, or {hint}'
    )
  return resume.from_saved(saved)


def latest_checkpoint_step(workdir) -> int:
  """The newest finished checkpoint's step, listed (orbax would warn first)."""
  ckpt_dir = workdir_lib.checkpoint_dir(epath.Path(workdir))
  if ckpt_dir.exists() and not ckpt_dir.is_dir():
    raise FileNotFoundError(
        f'{ckpt_dir} is a file, not a checkpoint directory.'
    )
  steps = [int(p.name) for p in ckpt_dir.glob('*') if p.name.isdigit()]
  if not steps:
    raise FileNotFoundError(
        f'{ckpt_dir} holds no checkpoint: the pre-training run in {workdir} '
        'has not saved one yet (it saves every checkpoint.every_steps steps '
        'and on SIGTERM); resume it with the same --workdir, or '
        + _RUN_HINT.format(workdir=workdir)
    )
  return max(steps)


def load_pretrained(workdir) -> Pretrained:
  """A run's latest online encoder (+ classifier), read-only; on every host."""
  workdir = epath.Path(workdir)
  config = saved_config(workdir)
  latest_checkpoint_step(workdir)  # a clear error when there is none.
  # Read-only: the run may still be training there.
  ckpt_dir = workdir_lib.checkpoint_dir(workdir)
  with checkpointing.Checkpointer(ckpt_dir, read_only=True) as ckpt:
    template = experiment.state_template(config, config.derived.num_classes)
    restored = ckpt.restore_latest(template)
  if restored is None:  # every step unreadable (each warned)
    raise FileNotFoundError(f'{ckpt_dir} holds no readable checkpoint.')
  state = restored.state
  params = networks.restrict(state.online_params, ('encoder', 'classifier'))
  net_state = _encoder_part(state.online_state)
  return Pretrained(config, params, net_state, int(restored.step), str(workdir))


def load_encoder(workdir) -> Callable[[Any], jax.Array]:
  """The pre-trained online encoder of a run, as a jitted function of images.

  Images should have the run's `data.image_size` side (the encoder pools
  globally, so any side works). Each distinct N compiles once.

  Args:
    workdir: a pre-training run directory (config.json and checkpoints/),
      local or gs://.

  Returns:
    encode(images float [N, H, W, 3] in [0, 1]) -> float32 [N, D] (D = 2048 x
    width for ResNet-50); `encode.pretrained` is the restored Pretrained.

  Raises:
    FileNotFoundError: the workdir has no config.json or no checkpoint.
    ValueError: (from encode) images not [N, H, W, 3] floats.
  """
  pretrained = load_pretrained(workdir)
  params, state = jax.device_put((pretrained.params, pretrained.state))
  jitted = jax.jit(encoder_apply(pretrained.config))

  def encode(images) -> jax.Array:
    shape, dtype = jnp.shape(images), jnp.result_type(images)
    if len(shape) != 4 or shape[-1] != 3 or jnp.issubdtype(dtype, jnp.integer):
      raise ValueError(
          f'images must be [N, H, W, 3] floats in [0, 1] (divide uint8 images '
          f'by 255); got {dtype} of shape {shape}.'
      )
    return jitted(params, state, images)

  encode.pretrained = pretrained
  return encode
