"""No module of byol_jax is over MAX_LINES lines.

Large modules mix concerns and are hard to review; a module that grows past
the limit is split by concern (as models/layers.py -> norms.py, or
report.py -> runs.py / plots.py), not cut arbitrarily.
"""
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'byol_jax'
MAX_LINES = 400


def _line_count(path: pathlib.Path) -> int:
  return len(path.read_text(encoding='utf-8').splitlines())


def test_no_module_over_the_line_limit():
  modules = sorted(PACKAGE.rglob('*.py'))
  assert modules, f'no modules found under {PACKAGE}'
  over = [(str(p.relative_to(REPO)), n) for p in modules
          if (n := _line_count(p)) > MAX_LINES]
  assert not over, (
      f'modules over {MAX_LINES} lines (split each by concern): ' +
      ', '.join(f'{path} ({n})' for path, n in over))
