"""The pre-trained encoder of a run: build it, load it, apply it.

Downstream use (README, "Using a pre-trained encoder"):

    from byol_jax.encoder import load_encoder
    encode = load_encoder('/tmp/byol_quickstart')
    features = encode(images)   # float [N, H, W, 3] in [0, 1] -> [N, D]

The encoder is the online network's ResNet (the paper evaluates the online
encoder f_theta, BYOL §3.1 and Appendix C.1; the official eval_experiment.py
reads `online_params`), run in inference mode: BatchNorm uses its moving
averages, so a representation depends only on its own image.
"""

import dataclasses
import functools
import json
from typing import Any, Callable

from etils import epath
import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections

from byol_jax import resume
from byol_jax import workdir as workdir_lib
from byol_jax.data import augment
from byol_jax.methods import networks

ENCODER_MODULES = ('encoder',)
_RUN_HINT = ('run a pre-training first: python -m byol_jax.main '
             '--config=experiments/quickstart.py --workdir={workdir}')


def _encoder_transform(model) -> hk.TransformedWithState:
  """The encoder alone (networks.make_encoder, as in networks.make_forward).

  Built on its own so that the projector's parameters are not needed to
  compute representations; same module, hence the same parameter paths.
  """
  return hk.transform_with_state(
      lambda images, is_training: networks.make_encoder(model)(images,
                                                               is_training))


def encoder_apply(config) -> Callable[[Any, Any, jax.Array], jax.Array]:
  """The frozen encoder as a pure function of (params, state, images).

  Args:
    config: the experiment config (only `config.model` is read).

  Returns:
    fn(params, state, images) -> representations float32 [N, D]: images are
    float [N, H, W, 3] in [0, 1], normalised here with augment.normalize (the
    ImageNet mean/std the pre-training augmentation ends with); params / state
    are Haiku trees holding (at least) the 'encoder' modules (others are
    ignored); BN runs with is_training=False. Pure and jit-able.
  """
  networks.validate_model_config(config.model)
  transformed = _encoder_transform(config.model)

  def apply(params, state, images):
    out, _ = transformed.apply(
        networks.restrict(params, ENCODER_MODULES),
        networks.restrict(state, ENCODER_MODULES), None,
        augment.normalize(images), is_training=False)
    return out
  return apply


@functools.lru_cache(maxsize=2)
def _jitted_init(key: ml_collections.FrozenConfigDict):
  """jit(init_train_state) of a config, cached on its hashable frozen form.

  Compiling the random initialisers is the slow part (about 10 s for the
  tiny model on CPU).

  Args:
    key: method, model, training and derived.num_classes, frozen.

  Returns:
    jit(train_state.init_train_state) of that method and optimizer.
  """
  from byol_jax import experiment  # pylint: disable=g-import-not-at-top
  from byol_jax import train_state as ts  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(key)
  method, optimizer = experiment.init_objects(config)
  return jax.jit(functools.partial(ts.init_train_state, method, optimizer))


def random_encoder(config):
  """(params, state) of the encoder at pre-training step 0 for config.seed.

  The same initialisation as pre-training (train_state.init_train_state from
  PRNGKey(config.seed)), restricted to the encoder, so the random baseline of
  linear evaluation is the trained encoder's own starting point (before any
  modified-init calibration, paper §3.2).

  Args:
    config: the experiment config (method, model, training, data, seed).

  Returns:
    (params, state) as host NumPy trees of 'encoder/...' modules.
  """
  from byol_jax import experiment  # pylint: disable=g-import-not-at-top
  # Keyed on what the initialisation depends on (not eval/logging fields).
  key = {k: config[k].to_dict() for k in ('model', 'training')}
  key['derived'] = {'num_classes': config.derived.num_classes}
  init = _jitted_init(ml_collections.FrozenConfigDict(
      dict(key, method=config.method)))
  state = init(jax.random.PRNGKey(config.seed),
               experiment.sample_images(config))
  return jax.device_get(
      (networks.restrict(state.online_params, ENCODER_MODULES),
       networks.restrict(state.online_state, ENCODER_MODULES)))


@dataclasses.dataclass
class Pretrained:
  """A pre-training run's config and online encoder, restored from disk.

  Attributes:
    config: the run's finalised config (WORKDIR/config.json).
    params: online encoder parameters (host NumPy, 'encoder/...' modules)
      and the online classifier's ('classifier/...').
    state: online encoder state (BN moving averages; {} without BN).
    step: the restored checkpoint's step.
    workdir: the run directory.
  """
  config: ml_collections.ConfigDict
  params: Any
  state: Any
  step: int
  workdir: str


def load_config(workdir) -> ml_collections.ConfigDict:
  """WORKDIR/config.json (the run's built config); clear error when missing.

  Args:
    workdir: a pre-training run directory (local or gs://).

  Returns:
    The built config (plan.build's), as resume.from_saved reads it.

  Raises:
    FileNotFoundError: no workdir or no config.json, naming the command that
      creates them.
    ValueError: config.json is not valid JSON.
  """
  workdir = epath.Path(workdir)
  path = workdir_lib.config_path(workdir)
  if not workdir.exists():
    raise FileNotFoundError(
        f'{workdir} does not exist: expected a pre-training workdir holding '
        f'{workdir_lib.CONFIG} and {workdir_lib.CHECKPOINTS}/; ' +
        _RUN_HINT.format(workdir=workdir))
  if not path.exists():
    raise FileNotFoundError(
        f'{path} not found: {workdir} is not a pre-training workdir (the run '
        f'writes {workdir_lib.CONFIG} when it starts); ' +
        _RUN_HINT.format(workdir=workdir))
  try:
    saved = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON ({e}); it was damaged: copy '
                     'it from a backup, or rerun the pre-training.') from None
  return resume.from_saved(saved)


def _no_checkpoint(workdir) -> FileNotFoundError:
  return FileNotFoundError(
      f'{workdir_lib.checkpoint_dir(workdir)} holds no checkpoint: the '
      f'pre-training run in {workdir} has not saved one yet (it saves every '
      'checkpoint.every_steps steps and on SIGTERM); resume it with the same '
      '--workdir, or ' + _RUN_HINT.format(workdir=workdir))


def latest_checkpoint_step(workdir) -> int:
  """The newest finished checkpoint's step of a run, from a directory listing.

  Args:
    workdir: a pre-training run directory (local or gs://).

  Returns:
    The step (int) of the newest finished checkpoint.

  Raises:
    FileNotFoundError: the run holds no finished checkpoint (orbax names a
      finished step directory by its step alone; unfinished ones carry a
      suffix), with the command that makes one.
  """
  workdir = epath.Path(workdir)
  ckpt_dir = workdir_lib.checkpoint_dir(workdir)
  steps = ([int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()]
           if ckpt_dir.exists() else [])
  if not steps:
    raise _no_checkpoint(workdir)
  return max(steps)


def load_pretrained(workdir) -> Pretrained:
  """Restores the online encoder of the latest checkpoint of a run.

  Multi-host: call it on every host (orbax synchronises the restore). Safe
  while the run trains: nothing in its workdir is created, moved or
  deleted; an unreadable newest checkpoint is skipped with a warning.

  Args:
    workdir: a pre-training run directory (local or gs://).

  Returns:
    A Pretrained.

  Raises:
    FileNotFoundError: no config.json or no checkpoint, naming the path and
      the command that creates them.
  """
  # Imported here: checkpointing pulls in orbax, experiment the methods.
  from byol_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from byol_jax import experiment  # pylint: disable=g-import-not-at-top
  workdir = epath.Path(workdir)
  config = load_config(workdir)
  ckpt_dir = workdir_lib.checkpoint_dir(workdir)
  latest_checkpoint_step(workdir)  # a clear error when there is none.
  # Read-only: the run may still be training in workdir (its lock, not ours).
  with checkpointing.Checkpointer(ckpt_dir, read_only=True) as ckpt:
    restored = ckpt.restore_latest(experiment.state_template(config))
  if restored is None:
    raise _no_checkpoint(workdir)
  state = restored.state
  return Pretrained(
      config=config,
      # The online classifier too: linear evaluation scores it on test.
      params=networks.restrict(state.online_params,
                               ENCODER_MODULES + ('classifier',)),
      state=networks.restrict(state.online_state, ENCODER_MODULES),
      step=int(restored.step), workdir=str(workdir))


def load_encoder(workdir) -> Callable[[Any], jax.Array]:
  """The pre-trained online encoder of a run, as a jitted function of images.

  Example:

    encode = load_encoder('/tmp/byol_quickstart')
    feats = encode(images)  # images: float [N, H, W, 3] in [0, 1]

  Images should have the run's `data.image_size` side (any side works, the
  encoder pools globally, but that is what it was trained on). Each distinct
  N compiles once; feed fixed-size batches for speed.

  Args:
    workdir: a pre-training run directory (holding config.json and
      checkpoints/), local or gs://.

  Returns:
    encode(images) -> jax.Array float32 [N, D] of representations (D = 2048
    for ResNet-50, times the width multiplier). `encode.pretrained` holds the
    restored Pretrained (config, params, state, step).

  Raises:
    FileNotFoundError: the workdir has no config.json or no checkpoint.
  """
  pretrained = load_pretrained(workdir)
  params, state = jax.device_put((pretrained.params, pretrained.state))
  jitted = jax.jit(encoder_apply(pretrained.config))

  def encode(images) -> jax.Array:
    if jnp.ndim(images) != 4 or jnp.shape(images)[-1] != 3:
      raise ValueError(f'images must be [N, H, W, 3] floats in [0, 1]; got '
                       f'shape {jnp.shape(images)}.')
    if jnp.issubdtype(jnp.result_type(images), jnp.integer):
      raise ValueError('images must be floats in [0, 1], got integers; '
                       'divide uint8 images by 255 first.')
    return jitted(params, state, images)

  encode.pretrained = pretrained
  return encode
