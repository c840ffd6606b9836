r"""DeepMind's released BYOL weights, read without running code, as a workdir.

    python -m byol_jax.import_official --checkpoint=pretrain_res50x1.pkl \
        --workdir=/tmp/byol_r50x1 [--arch=resnet50x1|resnet200x2]

The release (deepmind-research/byol README; CC BY-NC 4.0) is a dill protocol-2
pickle (byol/utils/checkpointing.py): {'experiment_state': (online_params,
target_params, online_state, target_state, opt_state), 'step', 'rng'}; what is
read of it and how: docs/ARCHITECTURE.md.
"""

import math
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
STATE_FIELDS = tuple(
    'online_params target_params online_state target_state opt_state'.split()
)
# Official (deepmind-research byol/utils/networks.py on Haiku's ResNet v1
# blocks) -> our module names (models/resnet.py, models/heads.py).
_RENAMES = (
    (r'^res_net\d+/~/', 'encoder/'),
    (r'^encoder/initial_(conv|batchnorm)$', r'encoder/stem_\1'),
    (r'block_group_(\d+)/~/block_(\d+)/~/', r'stage\1_block\2/'),
    (r'batchnorm', 'norm'),
    (r'^(projector|predictor)/(batch_)?(norm|linear)$', r'\1/\3_0'),
    (r'^classifier$', 'classifier/linear'),
)
_EMA = re.compile(r'^(.*)/~/(mean|var)_ema$')


def _require(ok, what: str) -> None:
  """ValueError 'WHAT: not a BYOL release checkpoint.' unless `ok`."""
  if not ok:
    raise ValueError(f'{what}: {NOT_RELEASE}.')


# The stand-ins find_class returns: functions and _NDARRAY, never a class of
# ours (BUILD could set a class's attributes); each checks its arguments.
_NDARRAY = object()  # numpy.ndarray: only _reconstruct's first argument.


class _Dtype:
  """numpy.dtype(spec) of a numeric kind, its byte order set by BUILD."""

  def __init__(self, spec):
    numeric = isinstance(spec, str) and re.fullmatch(r'[biuf]\d{1,2}', spec)
    why = 'only numeric arrays are read (object arrays run code when loaded)'
    _require(numeric, f'numpy.dtype({spec!r}): {why}')
    self.value = np.dtype(spec)

  def __setstate__(self, state):
    order = state[1]
    ok = order in '<>|=' and state[2:5] == (None, None, None)
    _require(ok, f'numpy.dtype state {state!r}')
    self.value = self.value.newbyteorder(order if order in '<>' else '=')


class _Array:
  """An ndarray's reduction state (shape, dtype, order, bytes) -> .array."""

  array = None

  def __setstate__(self, state):
    shape, dtype, fortran, data = state[-4:]
    ok = isinstance(dtype, _Dtype) and isinstance(data, bytes)
    ok = ok and all(isinstance(n, int) and n >= 0 for n in shape)
    ok = ok and len(data) == math.prod(shape) * dtype.value.itemsize
    _require(ok, f'an array of shape {shape!r}')
    order = 'F' if fortran else 'C'
    self.array = np.frombuffer(data, dtype.value).reshape(shape, order=order)


def _reconstruct(cls, shape, typecode):
  ok = cls is _NDARRAY and tuple(shape) == (0,) and typecode == b'b'
  _require(ok, f'numpy _reconstruct{(cls, shape, typecode)}')
  return _Array()


def _create_array(reconstruct, args, state, npdict=None):
  ok = reconstruct is _reconstruct and npdict is None
  _require(ok, f'dill _create_array of {reconstruct!r}')
  array = reconstruct(*args)
  array.__setstate__(state)
  return array.array


def _scalar(dtype, data):
  """A numpy scalar (a step may be one)."""
  ok = isinstance(dtype, _Dtype) and isinstance(data, bytes)
  _require(ok, f'numpy scalar of {dtype!r}')
  return np.frombuffer(data, dtype.value, count=1)[0]


def _latin1(text, encoding):
  """Protocol 2's bytes: _codecs.encode(text, 'latin1') and nothing else."""
  ok = isinstance(text, str) and encoding in ('latin1', 'latin-1')
  _require(ok, f'_codecs.encode(..., {encoding!r})')
  return text.encode('latin1')


def _namedtuple(name, fields, module):
  """dill's _create_namedtuple, `module` not imported: a tuple type."""
  ok = all(isinstance(x, str) for x in (name, module, *fields))
  _require(ok, f'namedtuple {name!r}')
  new = lambda cls, *values: tuple.__new__(cls, values)
  return type(name, (tuple,), {'fields': tuple(fields), '__new__': new})


def _mapping(items):
  """Haiku's frozendict / FlatMapping(dict) as a plain dict."""
  _require(isinstance(items, dict), f'a Haiku mapping of {type(items)}')
  return dict(items)


_GLOBALS = {
    ('dill._dill', '_create_array'): _create_array,
    ('dill._dill', '_create_namedtuple'): _namedtuple,
    ('numpy', 'ndarray'): _NDARRAY,
    ('numpy', 'dtype'): lambda spec, align=False, copy=True: _Dtype(spec),
    ('_codecs', 'encode'): _latin1,
    ('haiku._src.data_structures', 'frozendict'): _mapping,
    ('haiku._src.data_structures', 'FlatMapping'): _mapping,
}
for _numpy in ('numpy.core.multiarray', 'numpy._core.multiarray'):
  _GLOBALS[(_numpy, '_reconstruct')] = _reconstruct
  _GLOBALS[(_numpy, 'scalar')] = _scalar


class _Unpickler(pickle.Unpickler):
  """Resolves only _GLOBALS' names, to the stand-ins above."""

  def find_class(self, module, name):
    why = 'which a BYOL release does not hold; refusing to load it'
    _require((module, name) in _GLOBALS, f'it asks for {module}.{name}, {why}')
    return _GLOBALS[(module, name)]

  def persistent_load(self, pid):
    raise ValueError(f'persistent id {pid!r}: {NOT_RELEASE}.')


def read_release(path) -> dict:
  """{'step', 'online_params', 'online_state'} of the pickle, no code run;
  ValueError (one line) if it is not a release or cannot be read."""
  try:
    f = epath.Path(path).open('rb')
  except Exception as e:  # pylint: disable=broad-except
    # OSError locally; gs:// raises tf.errors (no OSError) through epath.
    raise ValueError(f'--checkpoint={path}: cannot be read: {e}') from None
  with f:
    try:
      data = _Unpickler(f).load()
      state = data.get('experiment_state') if isinstance(data, dict) else None
      fields = getattr(state, 'fields', None) or STATE_FIELDS
      ok = isinstance(state, tuple) and len(state) == len(STATE_FIELDS)
      ok = ok and isinstance(fields, tuple) and set(map(type, fields)) == {str}
      _require(ok, 'no experiment_state (online_params, ...) tuple at the top')
      step = data.get('step')
      is_int = type(step) is int or isinstance(step, np.integer)  # not bool
      _require(is_int and 0 < step < 2**31, f'step={step!r}')
    except ValueError as e:
      raise ValueError(f'--checkpoint={path}: {e}') from None
    except Exception as e:  # pylint: disable=broad-except
      # The file decides what fails here; no exception type is the program's.
      why = f'{type(e).__name__}: {e}: {NOT_RELEASE} (or a partial download)'
      raise ValueError(f'--checkpoint={path}: {why}') from None
  online = {k: v for k, v in zip(fields, state) if k.startswith('online_')}
  return {'step': int(step), **online}


def map_release(release: dict, template, arch: str) -> tuple[dict, dict]:
  """(online params, online state) with our names, 1:1 with `template`'s
  (state_template's shapes); ValueError naming the first official entry
  without a counterpart or of another shape, or the first of ours unfilled."""
  hint = f"is --arch={arch} the file's network?"
  want = {'params': template.online_params, 'state': template.online_state}
  out = {'params': {}, 'state': {}}
  for module, names in want['state'].items():
    if 'counter' in names:
      out['state'][module] = {'counter': np.int32(BN_COUNTER)}
  for kind, shapes in want.items():
    what = f'online_{kind}'
    _require(isinstance(release.get(what), dict), f'{what} is not a mapping')
    for module, values in release[what].items():
      ok = isinstance(module, str) and isinstance(values, dict)
      _require(ok, f'{what} {module!r} is not a mapping')
      for name, value in values.items():
        official = f'{module}/{name}'
        value = value.array if isinstance(value, _Array) else value
        # Rebuilt arrays or scalars: nested lists (a memo bomb of a few bytes)
        # are refused before numpy sees them.
        ok = isinstance(value, (np.ndarray, np.generic, int, float))
        _require(ok and isinstance(name, str), f'{what} {module}/{name!r}')
        ours, key, ema = module, name, _EMA.match(module)
        if kind == 'state':  # BN: `average` (not `hidden`) as mean / var.
          if ema and name in ('hidden', 'counter'):
            continue
          _require(ema and name == 'average', f'{what} {official}')
          ours, key = ema[1], ema[2]
        for pattern, replacement in _RENAMES:
          ours = re.sub(pattern, replacement, ours)
        value, expected = np.asarray(value), shapes.get(ours, {}).get(key)
        if expected is None:
          raise ValueError(
              f'{official} has no counterpart ({ours}/{key}) in our {arch}; '
              f'{hint}'
          )
        tail = value.shape[value.ndim - expected.ndim :]
        fits = value.size == expected.size and tail == expected.shape
        if value.dtype.kind != 'f' or not fits:
          raise ValueError(
              f'{official} is {value.dtype}{list(value.shape)}, our '
              f'{ours}/{key} {expected.dtype}{list(expected.shape)}; {hint}'
          )
        _require(np.all(np.isfinite(value)), f'{official} holds NaN or inf')
        value = value.reshape(expected.shape).astype(expected.dtype, copy=False)
        out[kind].setdefault(ours, {})[key] = value
  for kind, tree in want.items():
    for module, names in tree.items():
      missing = [n for n in names if n not in out[kind].get(module, {})]
      if missing:
        raise ValueError(
            f'our {arch} {kind} {module}/{missing[0]} has no counterpart in '
            f'the file; {hint}'
        )
  return out['params'], out['state']


def import_release(checkpoint, workdir, arch: str = 'resnet50x1', model=None):
  """Reads the release, maps it, writes WORKDIR; returns the release's step.

  checkpoint: pretrain_res50x1.pkl or pretrain_res200x2.pkl (local, gs://);
  workdir: new or empty; arch: a key of ARCHS; model: `model` fields instead
  of ARCHS[arch] (tests: small widths). Nothing is written on error: a
  ValueError (one line: not a release, another --arch, a used workdir) or an
  OSError (WORKDIR cannot be written).
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
  step, model = release['step'], model or ARCHS[arch]
  config = configs.load_experiment('byol_bn')
  config.model.update(model)
  if model != ARCHS['resnet50x1']:
    config.paper_top1 = -1.0  # byol_bn's number is ResNet-50's.
  config.training.total_steps = step
  # byol_bn.py at the release's step; ImageNet's sizes, no image read.
  run = plan.build(config, read_data=False)
  config, num_classes = run.config, run.data.num_classes
  template = experiment.state_template(config, num_classes)
  params, net_state = map_release(release, template, arch)
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
  """import_release of the flags; its ValueError/OSError: exit 2, one line on
  stderr, before anything compiles."""
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
