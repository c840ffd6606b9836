"""import_official: DeepMind's release format read without running code.

No release file here: fixtures are written in its format (dill protocol 2,
byol/utils/checkpointing.py) by plain pickle emitting dill's opcodes: arrays
through dill._dill._create_array over numpy's reduction (bytes as
_codecs.encode), namedtuples through dill._dill._create_namedtuple, Haiku
trees as frozendict / FlatMapping. The networks are Haiku's own ResNet v1 and
an MLP as the official code builds them, so names and shapes are Haiku's and
their eval-mode forward is the reference.
"""

import collections
import hashlib
import json
import os
import pickle
import subprocess
import sys

import haiku as hk
import jax
import numpy as np
from PIL import Image
import pytest

from byol_jax import augment
from byol_jax import encoder
from byol_jax import import_official
from tests import xla_env

STEP = 312_785  # ResNet-50's 1000 epochs at batch 4096 (byol_bn.py).
RECONSTRUCT = ('numpy.core.multiarray', '_reconstruct')  # numpy 1.x (2020)


class Global(tuple):
  """(module, name): written as pickle's GLOBAL opcode, as the file has it."""

  def __call__(self, *args):  # pickle's save_reduce wants a callable.
    raise NotImplementedError


class FrozenDict(dict):
  """Haiku 0.0.2's frozendict: reduces to frozendict(dict)."""


class FlatMapping(dict):
  """Haiku 0.0.3's FlatMapping: reduces to FlatMapping(dict)."""


class DeviceArray:
  """A 2020 jax DeviceArray: numpy's own reduction, not dill's (the rng)."""

  def __init__(self, array):
    self.array = array


class DillLikePickler(pickle._Pickler):  # pylint: disable=protected-access
  """Protocol 2 as dill 0.3.x writes the release's objects."""

  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def save_global_opcode(self, obj):
    self.write(pickle.GLOBAL + f'{obj[0]}\n{obj[1]}\n'.encode())
    self.memoize(obj)

  dispatch[Global] = save_global_opcode

  def reducer_override(self, obj):
    numpy_args = (Global(('numpy', 'ndarray')), (0,), b'b')
    if isinstance(obj, type) and issubclass(obj, tuple) and obj is not Global:
      if hasattr(obj, '_fields'):
        create = Global(('dill._dill', '_create_namedtuple'))
        return create, (obj.__name__, obj._fields, obj.__module__)
    if type(obj) is np.ndarray:  # pylint: disable=unidiomatic-typecheck
      create = Global(('dill._dill', '_create_array'))
      return create, (Global(RECONSTRUCT), numpy_args, obj.__reduce__()[2])
    if isinstance(obj, DeviceArray):
      return Global(RECONSTRUCT), numpy_args, obj.array.__reduce__()[2]
    if isinstance(obj, (FrozenDict, FlatMapping)):
      name = (
          type(obj).__name__.lower()
          if isinstance(obj, FrozenDict)
          else 'FlatMapping'
      )
      return Global(('haiku._src.data_structures', name)), (dict(obj),)
    return NotImplemented


def _namedtuple(name, fields, module):
  cls = collections.namedtuple(name, fields)
  cls.__module__ = module  # as the release names it (internal paths).
  return cls


BYOLState = _namedtuple(
    'BYOLState',
    import_official.STATE_FIELDS,
    'google3.learning.deepmind.research.byol.byol_experiment',
)
# optax.chain's state of the official LARS (byol/utils/optimizers.py).
OPTIMIZERS = 'google3.learning.deepmind.research.byol.utils.optimizers'
AddWeightDecayState = _namedtuple('AddWeightDecayState', (), OPTIMIZERS)
ScaleByLarsState = _namedtuple('ScaleByLarsState', ('mu',), OPTIMIZERS)
ScaleState = _namedtuple('ScaleState', (), 'optax._src.transform')


# ------------------------------------------------- the official networks
def _official_forward(depth, width):
  """Images -> pooled features, as byol/utils/networks.py on Haiku's blocks;
  the projector, predictor and classifier run too (their parameters)."""
  blocks = {50: (3, 4, 6, 3), 200: (3, 24, 36, 3)}[depth]
  bn = dict(decay_rate=0.9, eps=1e-5, create_scale=True, create_offset=True)

  class MLP(hk.Module):

    def __call__(self, x, is_training):
      x = hk.Linear(4096)(x)
      x = jax.nn.relu(hk.BatchNorm(**bn)(x, is_training))
      return hk.Linear(256, with_bias=False)(x)

  def forward(images, is_training):
    seen = {}

    def grab_features(next_f, args, kwargs, context):
      if context.method_name == '__call__' and (
          context.module.module_name.endswith('/~/logits')
      ):
        seen['features'] = args[0]
      return next_f(*args, **kwargs)

    with hk.intercept_methods(grab_features):
      hk.nets.ResNet(
          blocks,
          num_classes=1,  # the torso's unused logits layer; not in the file.
          bn_config=bn,
          channels_per_group=tuple(
              int(c * width) for c in (256, 512, 1024, 2048)
          ),
          initial_conv_config=dict(output_channels=int(64 * width)),
          name=f'res_net{depth}',
      )(images, is_training)
    h = seen['features']
    projection = MLP(name='projector')(h, is_training)
    MLP(name='predictor')(projection, is_training)
    hk.Linear(1000, name='classifier')(jax.lax.stop_gradient(h))
    return h

  return hk.transform_with_state(forward)


def official_trees(depth, width, seed=0):
  """(params, state) with Haiku's official names, random but plausible:
  BN `hidden` and `counter` say something else than `average`."""
  forward = _official_forward(depth, width)
  shapes = jax.eval_shape(
      lambda: forward.init(
          jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), True
      )
  )
  rng = np.random.default_rng(seed)

  def param(path, s):
    name = jax.tree_util.keystr(path)
    if "'w'" in name:
      fan_in = np.prod(s.shape[:-1])
      return rng.normal(0, 1 / np.sqrt(fan_in), s.shape).astype(np.float32)
    if "'scale'" in name:
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    return rng.normal(0, 0.1, s.shape).astype(np.float32)

  def state(path, s):
    name = jax.tree_util.keystr(path)
    if "'counter'" in name:
      return np.int32(7)
    if "'hidden'" in name:
      return np.full(s.shape, 5.0, np.float32)
    if 'var_ema' in name:
      return rng.uniform(0.5, 2.0, s.shape).astype(np.float32)
    return rng.normal(0, 0.2, s.shape).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(param, shapes[0])
  return params, jax.tree_util.tree_map_with_path(state, shapes[1])


def write_release(path, params, state, mapping=FrozenDict, step=STEP):
  """The release's dict, Haiku trees as `mapping` (outer and inner)."""
  without_logits = {k: v for k, v in params.items() if not k.endswith('logits')}
  tree = lambda t: mapping({k: mapping(v) for k, v in t.items()})
  online_params, online_state = tree(without_logits), tree(state)
  data = {
      # target and LARS momentum as references to the online trees: the
      # format's structure without tripling the file.
      'experiment_state': BYOLState(
          online_params,
          online_params,
          online_state,
          online_state,
          (
              AddWeightDecayState(),
              ScaleByLarsState(online_params),
              ScaleState(),
          ),
      ),
      'step': step,
      'rng': DeviceArray(np.array([0, 42], np.uint32)),
  }
  with open(path, 'wb') as f:
    DillLikePickler(f, protocol=2).dump(data)
  return path


def images(n=4, size=32, seed=1):
  return (
      np.random.default_rng(seed)
      .uniform(0, 1, (n, size, size, 3))
      .astype(np.float32)
  )


def _cli(*args, timeout=300):
  return subprocess.run(
      [sys.executable, '-m', 'byol_jax.import_official', *args],
      env=xla_env.subprocess_env(1),
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def _one_line_exit_2(proc, *needles):
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


# ---------------------------------------------------- ResNet-50 x1, full size
@pytest.fixture(scope='module')
def r50x1(tmp_path_factory):
  """The full-size ResNet-50 x1 release, imported by the command line."""
  root = tmp_path_factory.mktemp('r50x1')
  params, state = official_trees(50, 1)
  path = write_release(root / 'pretrain_res50x1.pkl', params, state)
  workdir = root / 'imported'
  proc = _cli(f'--checkpoint={path}', f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'Imported step {STEP}' in proc.stdout
  return params, state, workdir


def test_r50x1_features_equal_the_official_network(r50x1):
  params, state, workdir = r50x1
  encode = encoder.load_encoder(workdir)
  x = images()
  ours = np.asarray(encode(x))
  reference, _ = jax.jit(_official_forward(50, 1).apply, static_argnums=4)(
      params, state, None, augment.normalize(x), False
  )
  reference = np.asarray(reference)
  assert ours.shape == (4, 2048) and np.abs(reference).max() > 1e-2
  np.testing.assert_allclose(
      ours, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max()
  )
  pretrained = encode.pretrained
  assert pretrained.step == STEP
  # Encoder and classifier, one to one (the file's logits-free torso).
  official = {
      k: v for k, v in params.items() if k.startswith(('res_net', 'classifier'))
  }
  leaves = lambda t: len(jax.tree_util.tree_leaves(t))
  assert leaves(pretrained.params) == leaves(official) - 2  # logits w, b
  np.testing.assert_array_equal(
      pretrained.params['encoder/stage3_block2/conv_1']['w'],
      params['res_net50/~/block_group_3/~/block_2/~/conv_1']['w'],
  )
  np.testing.assert_array_equal(  # BN: the debiased `average`, as [C]
      pretrained.state['encoder/stage1_block0/shortcut_norm']['var'],
      state[
          'res_net50/~/block_group_1/~/block_0/~/shortcut_batchnorm/~/var_ema'
      ]['average'].reshape(-1),
  )
  saved = json.loads((workdir / 'config.json').read_text())
  assert (
      saved['model']['depth'] == 50 and saved['model']['encoder_norm'] == 'bn'
  )
  assert saved['training']['total_steps'] == STEP


def _tiny_folder(root, classes=2, per_class=(12, 4), size=32):
  rng = np.random.default_rng(0)
  for split, n in zip(('train', 'test'), per_class):
    for c in range(classes):
      folder = root / split / f'class{c}'
      folder.mkdir(parents=True)
      for i in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), np.uint8) // (c + 1)
        Image.fromarray(pixels).save(folder / f'{i}.png')
  return root


def test_linear_eval_by_flag_on_the_imported_workdir(r50x1, tmp_path):
  _, _, workdir = r50x1
  data = _tiny_folder(tmp_path / 'data')
  out = tmp_path / 'eval'
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'byol_jax.main',
          '--config=experiments/linear_eval.py',
          f'--config.eval.pretrain_workdir={workdir}',
          f'--workdir={out}',
          f'--config.data.source=folder:{data}',
          '--config.data.image_size=32',
          '--config.eval.num_epochs=1',
          '--config.eval.augment=false',
          '--config.eval.learning_rates=(0.1,)',
      ],
      env=xla_env.subprocess_env(1),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((out / 'eval_results.json').read_text())
  assert results['checkpoint_step'] == STEP and results['pretrain_finished']
  assert results['pretrain_workdir'] == str(workdir)
  assert (results['num_train'], results['num_test']) == (24, 8)
  assert 0.0 <= results['top1'] <= results['top5'] <= 1.0
  assert 'online_top1' not in results  # the release's 1000 classes vs 2


# ------------------------------------------- ResNet-200 x2 names, small width
def test_r200_flatmapping_release_imports_one_to_one(tmp_path):
  params, state = official_trees(200, 0.125)
  path = write_release(tmp_path / 'r200.pkl', params, state, FlatMapping, 900)
  model = dict(depth=200, width_multiplier=0.125)
  step = import_official.import_release(
      path, tmp_path / 'w', 'resnet200x2', model=model
  )
  assert step == 900
  pretrained = encoder.load_pretrained(tmp_path / 'w')
  assert pretrained.config.model.depth == 200 and pretrained.step == 900
  leaves = lambda t: len(jax.tree_util.tree_leaves(t))
  official = {
      k: v for k, v in params.items() if k.startswith(('res_net', 'classifier'))
  }
  assert leaves(pretrained.params) == leaves(official) - 2  # logits w, b
  np.testing.assert_array_equal(
      pretrained.params['encoder/stage2_block35/conv_1']['w'],
      params['res_net200/~/block_group_2/~/block_35/~/conv_1']['w'],
  )
  np.testing.assert_array_equal(
      pretrained.state['encoder/stem_norm']['mean'],
      state['res_net200/~/initial_batchnorm/~/mean_ema']['average'].reshape(-1),
  )


# ------------------------------- mismatches: one line, nothing written
@pytest.fixture(scope='module')
def small_r50():
  """ResNet-50 at width 1/8: the format and names at a small size."""
  return official_trees(50, 0.125)


SMALL = dict(depth=50, width_multiplier=0.125)


def test_the_mapping_is_checked_one_to_one(small_r50, tmp_path):
  params, state = small_r50
  r200 = dict(depth=200, width_multiplier=0.125)
  cases = {  # (params, state, arch, model, the line)
      'another arch': (
          params,
          state,
          'resnet200x2',
          r200,
          'our resnet200x2 params encoder/stage1_block10/conv_0/w has no '
          "counterpart in the file; is --arch=resnet200x2 the file's network?",
      ),
      'a missing parameter': (
          {
              k: v
              for k, v in params.items()
              if not k.endswith('block_2/~/conv_1')
          },
          state,
          'resnet50x1',
          SMALL,
          'our resnet50x1 params encoder/stage0_block2/conv_1/w has no '
          'counterpart in the file',
      ),
      'an extra parameter': (
          {**params, 'res_net50/~/head': {'w': np.zeros((2, 2), np.float32)}},
          state,
          'resnet50x1',
          SMALL,
          'res_net50/~/head/w has no counterpart (encoder/head/w) in our '
          'resnet50x1',
      ),
      'another shape': (
          {
              **params,
              'projector/linear_1': {'w': np.zeros((4096, 128), np.float32)},
          },
          state,
          'resnet50x1',
          SMALL,
          'projector/linear_1/w is float32[4096, 128], our projector/linear_1/w'
          ' float32[4096, 256]',
      ),
      'a missing BN average': (
          params,
          {
              k: v
              for k, v in state.items()
              if 'initial_batchnorm/~/var' not in k
          },
          'resnet50x1',
          SMALL,
          'our resnet50x1 state encoder/stem_norm/var has no counterpart',
      ),
  }
  for case, (p, s, arch, model, message) in cases.items():
    path = write_release(tmp_path / 'f.pkl', p, s)
    workdir = tmp_path / 'w'
    with pytest.raises(ValueError) as raised:
      import_official.import_release(path, workdir, arch, model=model)
    assert message in str(raised.value), (case, str(raised.value))
    assert '\n' not in str(raised.value) and not workdir.exists(), case


def test_hostile_contents_are_refused_before_anything_is_written(
    small_r50, tmp_path
):
  """Found by trying to break the importer: each was a traceback, a 1 GB
  allocation from a 718-byte file (nested lists), or a half-written workdir."""
  params, state = small_r50
  conv = 'res_net50/~/initial_conv'
  nan = dict(params[conv], w=np.full_like(params[conv]['w'], np.nan))
  nested = [[[0.0] * 4] * 4] * 4  # a memo bomb is lists nested like this
  ema = next(iter(state.values()))
  cases = {  # (params, state, step, what the line says)
      'NaN weights': ({**params, conv: nan}, state, STEP, 'holds NaN or inf'),
      'a nested list': ({**params, conv: {'w': nested}}, state, STEP, "'w'"),
      'a module name not a string': (params, {**state, 5: ema}, STEP, '5'),
      'a step beyond int32': (params, state, 2**31, 'step=2147483648'),
      'a boolean step': (params, state, True, 'step=True'),
  }
  for case, (p, s, step, needle) in cases.items():
    path = write_release(tmp_path / 'f.pkl', p, s, step=step)
    workdir = tmp_path / 'w'
    with pytest.raises(ValueError, match='not a BYOL release') as raised:
      import_official.import_release(path, workdir, model=SMALL)
    assert needle in str(raised.value), (case, str(raised.value))
    assert '\n' not in str(raised.value) and not workdir.exists(), case
  with pytest.raises(ValueError, match='must be non-empty paths'):
    import_official.import_release(path, '', model=SMALL)


def test_a_used_workdir_is_refused_untouched(small_r50, tmp_path):
  path = write_release(tmp_path / 'f.pkl', *small_r50)
  workdir = tmp_path / 'w'
  (workdir / 'checkpoints').mkdir(parents=True)
  (workdir / 'config.json').write_text('{"mine": 1}')
  before = {
      p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
      for p in workdir.rglob('*')
  }
  with pytest.raises(ValueError, match='is not empty: import into a new'):
    import_official.import_release(path, workdir, model=SMALL)
  after = {
      p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
      for p in workdir.rglob('*')
  }
  assert after == before


def test_the_files_module_names_are_never_imported(small_r50, tmp_path):
  """dill's own _create_namedtuple imports the module the file names."""
  marker = tmp_path / 'imported'
  (tmp_path / 'sneaky_byol.py').write_text(
      f'open({str(marker)!r}, "w").close()\n'
  )
  sys.path.insert(0, str(tmp_path))
  try:
    global BYOLState  # pylint: disable=global-statement
    kept, BYOLState = BYOLState, _namedtuple(
        'BYOLState', import_official.STATE_FIELDS, 'sneaky_byol'
    )
    path = write_release(tmp_path / 'f.pkl', *small_r50)
    release = import_official.read_release(path)
  finally:
    BYOLState = kept
    sys.path.remove(str(tmp_path))
  assert release['step'] == STEP and 'sneaky_byol' not in sys.modules
  assert not marker.exists()


# ------------------------------------ malicious pickles: refused, inert
class Evil:
  """Reduces to call(*args): what an attacker's pickle runs on load."""

  def __init__(self, call, *args):
    self.call, self.args = call, args

  def __reduce__(self):
    return self.call, self.args


def _malicious(kind, marker):
  touch = f'touch {marker}'
  if kind == 'os.system':
    return {'step': Evil(Global(('os', 'system')), touch)}
  if kind == 'eval':
    return Evil(Global(('__builtin__', 'eval')), f'open({str(marker)!r}, "w")')
  if kind == 'builtins':
    return {'rng': Evil(Global(('builtins', 'open')), str(marker), 'w')}
  if kind == 'object array':
    return {'rng': np.array([Evil(os.system, touch)], object)}
  if kind == 'persistent id':
    return {'step': 'PERSISTENT'}
  raise ValueError(kind)


MALICIOUS = {
    'os.system': 'os.system',
    'eval': '__builtin__.eval',
    'builtins': 'builtins.open',
    'object array': "numpy.dtype('O8')",
    'persistent id': 'persistent id',
}


@pytest.mark.parametrize('kind', sorted(MALICIOUS))
def test_malicious_pickles_are_refused_in_one_line_running_nothing(
    kind, tmp_path
):
  marker = tmp_path / 'ran'
  path = tmp_path / 'evil.pkl'
  obj = _malicious(kind, marker)
  with open(path, 'wb') as f:
    if kind == 'object array':  # numpy's own protocol-2 reduction
      pickle.dump(obj, f, protocol=2)
    elif kind == 'persistent id':
      pickler = DillLikePickler(f, protocol=2)
      pickler.persistent_id = (
          lambda o: f'touch {marker}' if o == 'PERSISTENT' else None
      )
      pickler.dump(obj)
    else:
      DillLikePickler(f, protocol=2).dump(obj)
  if kind != 'persistent id':  # the fixture is live: pickle.load runs it
    pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()
  workdir = tmp_path / 'w'
  line = _one_line_exit_2(
      _cli(f'--checkpoint={path}', f'--workdir={workdir}', timeout=120),
      MALICIOUS[kind],
      'not a BYOL release checkpoint',
  )
  assert line.startswith('import_official: --checkpoint=')
  assert not marker.exists() and not workdir.exists()


def test_a_truncated_release_is_one_line(small_r50, tmp_path):
  path = write_release(tmp_path / 'f.pkl', *small_r50)
  path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
  _one_line_exit_2(
      _cli(f'--checkpoint={path}', f'--workdir={tmp_path / "w"}'),
      'import_official: --checkpoint=',
      'not a BYOL release checkpoint (or a partial download)',
  )
  assert not (tmp_path / 'w').exists()


def test_another_arch_is_one_line_at_the_command_line(small_r50, tmp_path):
  path = write_release(tmp_path / 'f.pkl', *small_r50)
  _one_line_exit_2(
      _cli(
          f'--checkpoint={path}',
          f'--workdir={tmp_path / "w"}',
          '--arch=resnet200x2',
      ),
      'import_official: classifier/w is float32[256, 1000], our '
      'classifier/linear/w float32[4096, 1000]; ',
      "is --arch=resnet200x2 the file's network?",
  )
  assert not (tmp_path / 'w').exists()
