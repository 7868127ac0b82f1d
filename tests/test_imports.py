"""raymem's modules import one another in one direction: no circle, counting imports
inside functions too (a deferred import is still an edge of the layering). What a name
table imports with importlib when it is used (the technique registry, the sweep's stage
modules) is not an import statement, and not an edge here."""

import ast
from pathlib import Path

import raymem

PACKAGE = Path(raymem.__file__).parent


def module_name(path: Path) -> str:
    parts = ["raymem", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.AST, here: str, is_package: bool, modules: set[str]) -> list[str]:
    """The raymem modules an import statement names (`from pkg import mod` names pkg.mod)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's own package
            package = here.split(".") if is_package else here.split(".")[:-1]
            base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    found = []
    for name in names:  # `import raymem.a.b` names raymem.a.b; the longest known prefix
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        if parts:
            found.append(".".join(parts))
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = set()
        for node in ast.walk(tree):  # every level: module, class and function bodies
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(imported(node, name, path.name == "__init__.py", set(files)))
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as a path that ends where it starts; None if there is none."""
    state = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_graph_sees_function_level_imports():
    graph = import_graph()
    assert "raymem.stages.search" in graph["raymem.study"]
    assert "raymem.queries" in graph["raymem.report"]  # imported inside a function only


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "raymem's modules import each other in a circle: " + " -> ".join(cycle)
