r"""DeepMind's released BYOL weights, read without running code, as a workdir.

    python -m byol_jax.import_official --checkpoint=pretrain_res50x1.pkl \
        --workdir=/tmp/byol_r50x1 [--arch=resnet50x1|resnet200x2]

The release (deepmind-research/byol, README "Pretraining"; weights under CC
BY-NC 4.0) is one dill protocol-2 pickle, as byol/utils/checkpointing.py
writes it: {'experiment_state': (online_params, target_params, online_state,
target_state, opt_state), 'step', 'rng'}. Haiku trees are frozendict /
FlatMapping objects, namedtuples are rebuilt by dill._dill._create_namedtuple,
arrays by dill._dill._create_array over numpy's own reduction (bytes as
_codecs.encode(latin-1 text), protocol 2's way). A restricted unpickler
rebuilds exactly those as plain dicts, tuples and numeric numpy arrays; every
other global, persistent ids and object arrays are refused, and no module the
file names is imported. The online encoder, projector, predictor and
classifier map one to one onto our Haiku names (BN: the debiased `average`);
the workdir is byol_bn.py's config at the release's step and one checkpoint
(target = online, fresh LARS state), which load_encoder and linear evaluation
(--config.eval.pretrain_workdir) read like any run's.
"""

import pickle
import re

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import numpy as np

from byol_jax import experiment
from byol_jax.config import configs
from byol_jax.config import plan
from byol_jax.methods import networks
from byol_jax.results import report
from byol_jax.training import checkpointing
from byol_jax.training import resume
from byol_jax.training import runner
from byol_jax.training import workdir as workdir_lib

ARCHS = {  # --arch: the two released encoders (official README).
    'resnet50x1': dict(depth=50, width_multiplier=1.0),
    'resnet200x2': dict(depth=200, width_multiplier=2.0),
}
NOT_RELEASE = 'not a BYOL release checkpoint'
# Our BN counter beside the imported averages: BatchNorm's debiasing
# 1 - 0.9**n is exactly 1 in float32 from n = 165 (measured), so eval mode
# uses `average` as released.
BN_COUNTER = 10_000
# experiment_state's fields when the file's tuple has no names.
STATE_FIELDS = (
    'online_params',
    'target_params',
    'online_state',
    'target_state',
    'opt_state',
)


# What find_class returns: functions and this instance, never a class of
# ours (BUILD could set a class's attributes).
_NDARRAY = object()  # numpy.ndarray: only _reconstruct's first argument.


class _Dtype:
  """numpy.dtype(spec) of a numeric kind, its byte order set by BUILD."""

  def __init__(self, spec):
    self.value = np.dtype(spec)

  def __setstate__(self, state):
    order, rest = state[1], state[2:5]
    if order not in '<>|=' or rest != (None, None, None):
      raise ValueError(f'numpy.dtype state {state!r}: {NOT_RELEASE}.')
    self.value = self.value.newbyteorder(order if order in '<>' else '=')


class _Array:
  """An ndarray's reduction state (shape, dtype, order, bytes) -> .array."""

  array = None

  def __setstate__(self, state):
    shape, dtype, fortran, data = state[-4:]
    if not (
        isinstance(dtype, _Dtype)
        and isinstance(data, bytes)
        and all(isinstance(n, int) and n >= 0 for n in shape)
        and len(data) == np.prod(shape, dtype=np.int64) * dtype.value.itemsize
    ):
      raise ValueError(f'an array of shape {shape!r}: {NOT_RELEASE}.')
    self.array = np.frombuffer(data, dtype.value).reshape(
        shape, order='F' if fortran else 'C'
    )


def _dtype(spec, align=False, copy=True):
  del align, copy
  if not (isinstance(spec, str) and re.fullmatch(r'[biuf]\d{1,2}', spec)):
    raise ValueError(
        f'numpy.dtype({spec!r}): only numeric arrays are read (object '
        f'arrays run code when loaded); {NOT_RELEASE}.'
    )
  return _Dtype(spec)


def _reconstruct(cls, shape, typecode):
  if cls is not _NDARRAY or tuple(shape) != (0,) or typecode != b'b':
    raise ValueError(
        f'numpy _reconstruct{(cls, shape, typecode)}: {NOT_RELEASE}.'
    )
  return _Array()


def _create_array(reconstruct, args, state, npdict=None):
  if reconstruct is not _reconstruct or npdict is not None:
    raise ValueError(f'dill _create_array of {reconstruct!r}: {NOT_RELEASE}.')
  array = reconstruct(*args)
  array.__setstate__(state)
  return array.array


def _scalar(dtype, data):
  """A numpy scalar (a step may be one)."""
  if not (isinstance(dtype, _Dtype) and isinstance(data, bytes)):
    raise ValueError(f'numpy scalar of {dtype!r}: {NOT_RELEASE}.')
  return np.frombuffer(data, dtype.value, count=1)[0]


def _latin1(text, encoding):
  """Protocol 2's bytes: _codecs.encode(text, 'latin1') and nothing else."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise ValueError(f'_codecs.encode(..., {encoding!r}): {NOT_RELEASE}.')
  return text.encode('latin1')


class _Record(tuple):
  """A namedtuple of the file as a plain tuple with its field names."""

  fields = ()

  def __new__(cls, *values):
    return super().__new__(cls, values)


def _namedtuple(name, fields, module):
  """dill's _create_namedtuple without importing `module`: a _Record type."""
  names = (name, module, *fields)
  if not all(isinstance(x, str) for x in names):
    raise ValueError(f'namedtuple {name!r}: {NOT_RELEASE}.')
  return type(name, (_Record,), {'fields': tuple(fields)})


def _mapping(items):
  """Haiku's frozendict / FlatMapping(dict) as a plain dict."""
  if not isinstance(items, dict):
    raise ValueError(
        f'a Haiku mapping of {type(items).__name__}: {NOT_RELEASE}.'
    )
  return dict(items)


_ALLOWED = {
    ('dill._dill', '_create_array'): _create_array,
    ('dill._dill', '_create_namedtuple'): _namedtuple,
    ('numpy', 'ndarray'): _NDARRAY,
    ('numpy', 'dtype'): _dtype,
    ('_codecs', 'encode'): _latin1,
    ('haiku._src.data_structures', 'frozendict'): _mapping,
    ('haiku._src.data_structures', 'FlatMapping'): _mapping,
}
for _numpy in ('numpy.core.multiarray', 'numpy._core.multiarray'):
  _ALLOWED[(_numpy, '_reconstruct')] = _reconstruct
  _ALLOWED[(_numpy, 'scalar')] = _scalar


class _Unpickler(pickle.Unpickler):
  """Resolves only _ALLOWED's names, to the stand-ins above."""

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED:
      raise ValueError(
          f'the file asks for {module}.{name}, which a BYOL release does not '
          f'hold; refusing to load it: {NOT_RELEASE}.'
      )
    return _ALLOWED[(module, name)]

  def persistent_load(self, pid):
    raise ValueError(f'persistent id {pid!r}: {NOT_RELEASE}.')


def read_release(path) -> dict:
  """The release pickle as plain data, no code run (ValueError otherwise).

  Args:
    path: the .pkl file (local or gs://).

  Returns:
    {'step': int, 'online_params', 'online_state': {module: {name: array}}}.

  Raises:
    ValueError: the file is not a BYOL release checkpoint (one line: the
      global, opcode or field that is not one's).
    OSError: the file cannot be read.
  """
  try:
    f = epath.Path(path).open('rb')
  except Exception as e:  # pylint: disable=broad-except
    # OSError locally; gs:// raises tf.errors (no OSError) through epath.
    raise ValueError(f'--checkpoint={path}: cannot be read: {e}') from None
  with f:
    try:
      data = _Unpickler(f).load()
    except Exception as e:  # pylint: disable=broad-except
      # The file decides what fails here; no exception type is the program's.
      detail = (
          str(e)
          if isinstance(e, ValueError)
          else f'{type(e).__name__}: {e}: {NOT_RELEASE} (or a partial download)'
      )
      raise ValueError(f'--checkpoint={path}: {detail}') from None
  state = data.get('experiment_state') if isinstance(data, dict) else None
  if not isinstance(state, tuple) or len(state) != len(STATE_FIELDS):
    raise ValueError(
        f'--checkpoint={path}: no experiment_state (online_params, ...) '
        f'tuple at the top: {NOT_RELEASE}.'
    )
  fields = getattr(state, 'fields', None) or STATE_FIELDS
  if not isinstance(fields, tuple) or set(map(type, fields)) != {str}:
    raise ValueError(f'--checkpoint={path}: experiment_state: {NOT_RELEASE}.')
  state = dict(zip(fields, state))
  step = data.get('step')
  if (
      not isinstance(step, (int, np.integer))
      or isinstance(step, bool)
      or not 0 < step < 2**31
  ):
    raise ValueError(f'--checkpoint={path}: step={step!r}: {NOT_RELEASE}.')
  return dict(
      step=int(step),
      online_params=state.get('online_params'),
      online_state=state.get('online_state'),
  )


# Official (deepmind-research byol/utils/networks.py on Haiku's ResNet v1
# blocks) -> our module names (models/resnet.py, models/heads.py).
_RENAMES = (
    (r'^res_net\d+/~/', 'encoder/'),
    (r'^encoder/initial_conv$', 'encoder/stem_conv'),
    (r'^encoder/initial_batchnorm$', 'encoder/stem_norm'),
    (r'block_group_(\d+)/~/block_(\d+)/~/', r'stage\1_block\2/'),
    (r'batchnorm', 'norm'),
    (r'^(projector|predictor)/batch_norm$', r'\1/norm_0'),
    (r'^(projector|predictor)/linear$', r'\1/linear_0'),
    (r'^classifier$', 'classifier/linear'),
)
_EMA = re.compile(r'^(.*)/~/(mean|var)_ema$')


def our_module(name: str) -> str:
  """Our Haiku module name of an official one."""
  for pattern, replacement in _RENAMES:
    name = re.sub(pattern, replacement, name)
  return name


def _entries(tree, what):
  """(module, name, value) of a {module: {name: array}} tree."""
  if not isinstance(tree, dict):
    raise ValueError(f'{what} is not a Haiku mapping: {NOT_RELEASE}.')
  for module, values in tree.items():
    if not isinstance(module, str) or not isinstance(values, dict):
      raise ValueError(f'{what} {module!r} is not a mapping: {NOT_RELEASE}.')
    for name, value in values.items():
      value = value.array if isinstance(value, _Array) else value
      # Arrays the unpickler rebuilt, or scalars: nested lists (a memo bomb
      # of a few bytes) are refused before numpy sees them.
      if not isinstance(name, str) or not isinstance(
          value, (np.ndarray, np.generic, int, float)
      ):
        raise ValueError(f'{what} {module}/{name!r}: {NOT_RELEASE}.')
      yield module, name, np.asarray(value)


def map_release(release: dict, template, arch: str) -> tuple[dict, dict]:
  """(online params, online state) with our names, 1:1 with `template`'s.

  `template`: experiment.state_template's TrainState (shapes); BN state maps
  `average` (not `hidden`) to mean / var, with counter BN_COUNTER. ValueError
  naming the first official entry without a counterpart, of another shape,
  or the first of ours left unfilled.
  """
  hint = f"is --arch={arch} the file's network?"
  out = {'params': {}, 'state': {}}
  want = {'params': template.online_params, 'state': template.online_state}

  def put(kind, official, module, name, value):
    expected = want[kind].get(module, {}).get(name)
    if expected is None:
      raise ValueError(
          f'{official} has no counterpart ({module}/{name}) in our {arch}; '
          f'{hint}'
      )
    if (
        value.dtype.kind != 'f'
        or value.size != expected.size
        or (value.shape[value.ndim - len(expected.shape) :] != expected.shape)
    ):
      raise ValueError(
          f'{official} is {value.dtype}{list(value.shape)}, our {module}/{name}'
          f' {expected.dtype}{list(expected.shape)}; {hint}'
      )
    if not np.all(np.isfinite(value)):
      raise ValueError(f'{official} holds NaN or inf: {NOT_RELEASE}.')
    out[kind].setdefault(module, {})[name] = value.reshape(
        expected.shape
    ).astype(expected.dtype, copy=False)

  for module, name, value in _entries(
      release['online_params'], 'online_params'
  ):
    put('params', f'{module}/{name}', our_module(module), name, value)
  for module, name, value in _entries(release['online_state'], 'online_state'):
    ema = _EMA.match(module)
    if ema and name == 'average':
      put('state', f'{module}/{name}', our_module(ema[1]), ema[2], value)
    elif not (ema and name in ('hidden', 'counter')):
      raise ValueError(f'online_state {module}/{name}: {NOT_RELEASE}.')
  for module, values in want['state'].items():
    if 'counter' in values:
      out['state'].setdefault(module, {})['counter'] = np.int32(BN_COUNTER)
  for kind, tree in want.items():
    for module, values in tree.items():
      for name in values:
        if name not in out[kind].get(module, {}):
          raise ValueError(
              f'our {arch} {kind} {module}/{name} has no counterpart in the '
              f'file; {hint}'
          )
  return out['params'], out['state']


def release_config(model: dict, step: int):
  """experiments/byol_bn.py with `model`, `step` steps long: its plan.Run.

  read_data=False: ImageNet's sizes from sources.KNOWN_SIZES, no image read.
  """
  config = configs.load_experiment('byol_bn')
  config.model.update(model)
  if model != ARCHS['resnet50x1']:
    config.paper_top1 = -1.0  # byol_bn's number is ResNet-50's.
  config.training.total_steps = step
  return plan.build(config, read_data=False)


def import_release(checkpoint, workdir, arch: str = 'resnet50x1', model=None):
  """Reads the release, maps it and writes WORKDIR (nothing written on error).

  Args:
    checkpoint: pretrain_res50x1.pkl or pretrain_res200x2.pkl (local, gs://).
    workdir: a new or empty directory.
    arch: a key of ARCHS (the encoder the file holds).
    model: `model` config fields instead of ARCHS[arch] (tests: small widths).

  Returns:
    The release's step (the checkpoint's step in WORKDIR).

  Raises:
    ValueError: not a release checkpoint, another --arch, a workdir in use
      (one line each).
    OSError: the checkpoint cannot be read.
  """
  if not str(checkpoint) or not str(workdir):
    raise ValueError('--checkpoint and --workdir must be non-empty paths.')
  workdir = epath.Path(workdir)
  try:
    workdir_lib.check_not_a_file(workdir)
    used = workdir.exists() and any(workdir.iterdir())
  except workdir_lib.WorkdirError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # gs:// raises tf.errors (no OSError) through epath.
    raise ValueError(f'--workdir={workdir}: cannot be read: {e}') from None
  if used:
    raise ValueError(
        f'--workdir={workdir} is not empty: import into a new directory.'
    )
  release = read_release(checkpoint)
  step = release['step']
  run = release_config(model or ARCHS[arch], step)
  config, num_classes = run.config, run.data.num_classes
  template = experiment.state_template(config, num_classes)
  params, net_state = map_release(release, template, arch)
  del release
  _, optimizer = experiment.init_objects(config, num_classes)
  state = experiment.TrainState(
      step=np.int32(step),
      # init_train_state's base key for config.seed.
      rng=jax.random.split(jax.random.PRNGKey(config.seed))[1],
      online_params=params,
      online_state=net_state,
      target_params=networks.restrict(params),
      target_state=networks.restrict(net_state),
      opt_state=optimizer.init(params),
  )
  workdir.mkdir(parents=True, exist_ok=True)
  resume.write_config(run, workdir, start_step=step, trajectory_changes={})
  extra = {'trajectory': resume.trajectory(run), 'imported': str(checkpoint)}
  with checkpointing.Checkpointer(workdir_lib.checkpoint_dir(workdir)) as ckpt:
    ckpt.save(step, state, extra)
  return step


def main(argv):
  """`python -m byol_jax.import_official`: import_release of the flags.

  Args:
    argv: the program name alone (flags: --checkpoint, --workdir, --arch).

  Raises:
    SystemExit: code 2 and one line on stderr for every ValueError or
      OSError of import_release (a file that is not a release, another
      --arch, a used --workdir, an unreadable file), before anything compiles.
  """
  del argv
  runner.quiet_libraries()
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  try:
    step = import_release(f.checkpoint, f.workdir, f.arch)
  except (ValueError, OSError) as e:
    report.exit_one_line(f'import_official: {e}')
  print(
      f'Imported step {step} of {f.checkpoint} ({f.arch}) into {f.workdir}. '
      'Linear evaluation: python -m byol_jax.main '
      '--config=experiments/linear_eval.py '
      f'--config.eval.pretrain_workdir={f.workdir} --workdir=EVAL_DIR'
  )


if __name__ == '__main__':
  flags.DEFINE_string('checkpoint', None, 'The release .pkl (local or gs://).')
  flags.DEFINE_string('workdir', None, 'A new directory for the workdir.')
  flags.DEFINE_enum('arch', 'resnet50x1', list(ARCHS), 'The encoder it holds.')
  flags.mark_flags_as_required(['checkpoint', 'workdir'])
  app.run(main, flags_parser=report.parse_flags)
