"""The package's imports point one way: no module imports itself back."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'byol_jax'


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def import_graph(package=PACKAGE) -> dict:
  """{module: set of byol_jax modules it imports anywhere, functions too}."""
  modules = {_module_name(p): p for p in package.rglob('*.py')}
  graph = {}
  for name, path in modules.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        targets = [node.module] + [
            f'{node.module}.{a.name}' for a in node.names
        ]
      else:
        continue
      deps |= {t for t in targets if t in modules and t != name}
    # A package's __init__ is not an edge of its own submodules' imports.
    graph[name] = {d for d in deps if d != 'byol_jax'}
  return graph


def find_cycle(graph: dict):
  """One import cycle as a list of modules, or None."""
  state = {}

  def visit(node, stack):
    state[node] = 'open'
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == 'open':
        return stack[stack.index(dep) :] + [dep]
      if dep not in state:
        found = visit(dep, stack)
        if found:
          return found
    stack.pop()
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node, [])
      if found:
        return found
  return None


def test_find_cycle_finds_one():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == [
      'a',
      'b',
      'c',
      'a',
  ]
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None


def test_byol_jax_has_no_import_cycle():
  graph = import_graph()
  assert len(graph) > 40 and 'byol_jax.training.pretrain' in graph
  cycle = find_cycle(graph)
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)
