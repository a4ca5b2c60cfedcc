"""No import cycles among the project's modules, counting the imports inside functions.

A function-local import does not remove a cycle, it only defers it to the first call (and hides it from a reader).
Every module under kernels/, tokendpo/, search/ and benchmarks/ is parsed with `ast`; every import statement
anywhere in it (module level, inside functions, methods or conditionals) and every `importlib.import_module` /
`__import__` call with a literal name becomes an edge to the project module it loads: `from a.b import c` loads
`a.b.c` when that is a module, else `a.b`; relative imports are resolved against the importing module's package.
Imports of anything outside the project are ignored. The test fails on any strongly connected component of
more than one module (or a module importing itself) and prints one concrete cycle per component, each edge with
its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "tokendpo", "search", "benchmarks")


def project_modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name → file, for every .py file under the packages (a package's __init__.py is the package)."""
    mods = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is a project module (None outside the project)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in mods:
            return ".".join(parts[:n])
    return None


def _imported_names(module: str, path: Path, tree: ast.AST, mods: dict[str, Path]):
    """(dotted name it loads, line) for each import anywhere in the module's tree."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                base = ".".join(up + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if alias.name != "*" and sub in mods else base), node.lineno
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__"):
                yield node.args[0].value, node.lineno


def import_graph(root: Path, packages=PACKAGES) -> dict[str, dict[str, tuple[Path, int]]]:
    """module → {project module it imports: (file, line of the first such import)}."""
    mods = project_modules(root, packages)
    graph: dict[str, dict[str, tuple[Path, int]]] = {m: {} for m in mods}
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, line in _imported_names(module, path, tree, mods):
            target = _resolve(name, mods)
            if target is not None:
                graph[module].setdefault(target, (path, line))
    return graph


def _components(graph: dict[str, dict]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    comps.append(sorted(comp))
    return comps


def _shortest_cycle(graph: dict[str, dict], members: set[str], start: str) -> list[str]:
    """A shortest cycle through `start` inside its component (breadth-first), as [start, ..., start]."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in graph[v]:
                if w == start:  # v's parent chain leads back to start: start -> ... -> v -> start
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is on no cycle inside its component")


def find_cycles(root: Path, packages=PACKAGES) -> list[str]:
    """One line per cycle — the shortest through each module of each tangled component, each once — as
    `a -> b (file:line); b -> a (file:line)`."""
    graph = import_graph(root, packages)
    lines = []
    for comp in _components(graph):
        if len(comp) == 1 and comp[0] not in graph[comp[0]]:
            continue
        seen = set()
        for start in comp:
            cycle = _shortest_cycle(graph, set(comp), start)
            k = cycle.index(min(cycle[:-1]))
            key = tuple(cycle[k:-1] + cycle[:k])  # the same cycle found from another of its modules
            if key in seen:
                continue
            seen.add(key)
            hops = [f"{a} -> {b} ({graph[a][b][0].relative_to(root)}:{graph[a][b][1]})"
                    for a, b in zip(cycle, cycle[1:])]
            lines.append(f"cycle among {', '.join(comp)}: " + "; ".join(hops))
    return lines


def test_no_import_cycles():
    cycles = find_cycles(REPO)
    assert not cycles, "import cycles (function-local imports count):\n" + "\n".join(cycles)


LAYERS = {"kernels": 0, "tokendpo": 1, "search": 2, "benchmarks": 3}  # a package imports only lower layers


def test_imports_follow_the_layers():
    """kernels ← tokendpo ← search ← benchmarks: kernels imports none of the others, tokendpo not search, and no
    library package imports benchmarks."""
    upward = [f"{m} -> {t} ({path.relative_to(REPO)}:{line})"
              for m, targets in import_graph(REPO).items() for t, (path, line) in targets.items()
              if LAYERS[t.split(".")[0]] > LAYERS[m.split(".")[0]]]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_the_graph_sees_the_imports_it_must(tmp_path):
    """The checker itself: a cycle hidden in a function-local relative import, in a method, or behind
    importlib.import_module is reported; a one-way chain (with `from pkg import submodule`) is not."""
    def write(rel, text):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    write("alpha/__init__.py", "")
    write("alpha/a.py", "import os\nfrom alpha import b\n")
    write("alpha/b.py", "def f():\n    from . import a\n    return a\n")  # a -> b -> a, hidden in a function
    write("alpha/c.py", "from alpha.d import thing\n")
    write("alpha/d.py", "import json\nthing = 1\n")
    write("beta/__init__.py", "")
    write("beta/x.py", "class K:\n    def m(self):\n        from ..beta import y\n")
    write("beta/y.py", "import importlib\nM = importlib.import_module('beta.x')\n")
    cycles = find_cycles(tmp_path, ("alpha", "beta"))
    assert len(cycles) == 2, cycles
    assert cycles[0].startswith("cycle among alpha.a, alpha.b: alpha.a -> alpha.b (alpha/a.py:2); "
                                "alpha.b -> alpha.a (alpha/b.py:2)"), cycles
    assert cycles[1].startswith("cycle among beta.x, beta.y: "), cycles
    graph = import_graph(tmp_path, ("alpha", "beta"))
    assert set(graph["alpha.c"]) == {"alpha.d"} and graph["alpha.d"] == {}
