"""The paper tables' cells as experiment configs (what reproduce.py runs)."""

import dataclasses
import itertools
import shlex
from typing import Sequence

import ml_collections
from ml_collections.config_flags import config_flags

from byol_jax.config import configs
from byol_jax.config import presets


@dataclasses.dataclass(frozen=True)
class Variant:
  """One table cell: WORKDIR/<name>, experiments/<config>.py:<options>."""

  name: str
  config: str
  options: str = ''

  def config_arg(self, scale: str, dataset: str = '') -> str:
    """'<scale>[,<options>][,dataset=<dataset>]': the config string."""
    opts = [scale, self.options, f'dataset={dataset}' if dataset else '']
    return ','.join(filter(None, opts))

  def command(self, scale: str, dataset: str, workdir, overrides=()) -> str:
    """The equivalent `python -m byol_jax.main` command, one shell line."""
    return (
        f'python -m byol_jax.main --config=experiments/{self.config}.py:'
        f'{self.config_arg(scale, dataset)} --workdir={workdir}'
        + ''.join(' ' + shlex.quote(f'--config.{k}={v}') for k, v in overrides)
    )


def table_variants(table: int) -> list[Variant]:
  """Table 1 (27 BYOL + 9 SimCLR norm cells) or 2, in table order."""
  if table == 2:
    return [
        Variant('bn', 'byol_bn'),
        Variant('no_norm', 'no_bn'),
        Variant('modified_init', 'modified_init'),
        Variant('gn_ws', 'gn_ws'),
    ]
  if table != 1:
    raise ValueError(f'--table={table}: use 1 or 2.')
  parts = (('enc', 'encoder'), ('proj', 'projector'), ('pred', 'predictor'))
  return [
      Variant(
          method + ''.join(f'_{p}-{n}' for (p, _), n in zip(parts, cell)),
          'ablation',
          f'method={method}'
          + ''.join(f',{field}={n}' for (_, field), n in zip(parts, cell)),
      )
      for method, k in (('byol', 3), ('simclr', 2))
      for cell in itertools.product(presets.TABLE1_NORMS, repeat=k)
  ]


def select(variants: Sequence[Variant], names: Sequence[str]) -> list[Variant]:
  """The variants named in `names` (empty: all), in table order."""
  known = {v.name for v in variants}
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(
        f'--variants: {", ".join(unknown)} not in this table; '
        f'use some of: {", ".join(sorted(known))}.'
    )
  return [v for v in variants if not names or v.name in names]


def variant_config(
    variant: Variant,
    scale: str,
    dataset: str = '',
    overrides=(),
    experiments_dir=configs.EXPERIMENTS_DIR,
):
  """The config of `--config=...:<arg> --config.<k>=<v>`; ValueError if bad."""
  config = configs.load_experiment(
      variant.config,
      variant.config_arg(scale, dataset),
      experiments_dir=experiments_dir,
  )
  for key, value in overrides:
    parent, _, leaf = key.rpartition('.')
    try:
      node = config[parent] if parent else config
      old = node[leaf]
    except (KeyError, AttributeError, TypeError):
      raise ValueError(
          f'--override {key}={value}: the config has no field {key!r}.'
      ) from None
    parser = _PARSERS.get(type(old))
    if parser is None or isinstance(old, ml_collections.ConfigDict):
      raise ValueError(
          f'--override {key}={value}: {key} is a section of the '
          f'config, not a field; name one of its fields, e.g. '
          f'{key}.{next(iter(old), "FIELD")}=VALUE.'
      )
    try:
      node[leaf] = parser.parse(value)
    except ValueError as e:
      expected = {bool: 'true or false', tuple: f'a tuple ({e})'}.get(
          type(old), f'a {type(old).__name__}'
      )
      raise ValueError(
          f'--override {key}={value!r}: expected {expected}.'
      ) from None
  return config


# main.py's --config.<field> parsers, by the type of the field's default: an
# override means what the printed command's --config.<field>=<value> means.
_PARSERS = config_flags._FIELD_TYPE_TO_PARSER  # pylint: disable=protected-access


def parse_overrides(items: Sequence[str]) -> list[tuple[str, str]]:
  """'field=value' strings -> stripped (field, value) pairs."""
  out = []
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise ValueError(
          f'--override {item!r}: use field=value, e.g. '
          'training.total_steps=100.'
      )
    out.append((key.strip(), value.strip()))
  return out
