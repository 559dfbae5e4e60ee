"""No import circles among the project's modules, lazy imports inside functions included.

A module that imports the module importing it back means two files are one job or a third file is
missing; a late import only hides the circle from Python, not from the reader.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "training", "service", "loadtests")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in it (top level, functions, ``if TYPE_CHECKING``)."""
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from training import bench` imports the module training.bench; `from models import CELLS`, models
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
    return {name for name in found if name in modules and name != here}


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    files = [path for package in packages for path in sorted((root / package).rglob("*.py"))]
    modules = {module_name(path, root) for path in files}
    return {module_name(path, root): imports_of(path, root, modules) for path in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per group of modules that reach each other, as ``[a, b, ..., a]`` (Tarjan's components)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(_circle(graph, group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _circle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no circle through {start} in {sorted(group)}")


def test_no_import_circles_among_the_projects_modules():
    found = cycles(import_graph(ROOT, PACKAGES))
    assert not found, "import circles: " + "; ".join(" -> ".join(circle) for circle in found)


def test_the_check_sees_a_circle_closed_by_an_import_inside_a_function(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("def run():\n    from . import c\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\nfrom pkg.b import run\n")
    (tmp_path / "pkg" / "d.py").write_text("from pkg.a import b\n")  # into the circle, not part of it
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
