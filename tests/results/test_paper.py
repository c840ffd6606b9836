"""byol_jax/results/paper.py against ../shared/paper/TABLES.md, and configs."""

import pathlib
import re

import pytest

from byol_jax.config import configs
from byol_jax.results import paper

REPO = pathlib.Path(__file__).resolve().parents[2]
TABLES = REPO.parent / 'shared' / 'paper' / 'TABLES.md'
NORM = {'BN': 'bn', 'LN': 'ln', '-': 'none'}


def _config(name, arg=''):
  return configs.load_experiment(name, arg)


def test_transcription_matches_the_shared_tables():
  if not TABLES.exists():
    pytest.skip(f'needs ../shared/paper/TABLES.md beside the repo ({TABLES})')
  byol, simclr, table2 = {}, {}, {}
  for line in TABLES.read_text().splitlines():
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    if len(cells) == 5 and cells[0] in ('BYOL', 'SimCLR'):
      top1 = float(re.match(r'[\d.]+', cells[4]).group(0))
      if cells[0] == 'BYOL':
        byol[tuple(NORM[c] for c in cells[1:4])] = top1
      else:
        simclr[tuple(NORM[c] for c in cells[1:3])] = top1
    elif len(cells) == 3 and re.fullmatch(r'[\d.]+', cells[2]):
      table2[cells[0]] = float(cells[2])
  assert byol == paper.TABLE1_BYOL and len(byol) == 15
  assert simclr == paper.TABLE1_SIMCLR and len(simclr) == 7
  assert table2 == {
      'Vanilla BN': paper.TABLE2['byol_bn'],
      'No BN': paper.TABLE2['no_bn'],
      'Modified init (§3.2)': paper.TABLE2['modified_init'],
      'GN + WS (§3.3)': paper.TABLE2['gn_ws'],
  }


def test_configs_carry_the_paper_numbers():
  for name, top1 in paper.TABLE2.items():
    assert _config(name).paper_top1 == top1
  assert _config('simclr').paper_top1 == 69.3
  assert (
      _config('ablation', 'encoder=ln,projector=ln,predictor=none').paper_top1
      == 5.4
  )
  assert (
      _config(
          'ablation', 'method=simclr,encoder=none,projector=none'
      ).paper_top1
      == 0.1
  )
  # A combination the paper did not run: no number.
  assert (
      _config('ablation', 'encoder=ln,projector=bn,predictor=bn').paper_top1
      == -1.0
  )
  assert paper.collapsed(5.4) and not paper.collapsed(53.8)
  assert paper.collapsed(None) is None and paper.collapsed(-1.0) is None
