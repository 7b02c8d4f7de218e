"""The packages' import graph, read from the source with ast (nothing is imported): no circle in
either package, and the layering README's layout states: trainer never imports Beam, pipelines
never imports trainer (but the demo, which runs both), the stages' records do no work."""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "trainer")
# Module name prefixes of Beam: "apache_beam" and its submodules, tf.Transform's Beam API.
BEAM = ("apache_beam", "tensorflow_transform.beam")


def _is_beam(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in BEAM)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, *, at_import_time: bool = False) -> set[str]:
    """The modules ``module`` imports (absolute names; ``from p import m`` names ``p.m`` when m is
    a module). Every import counts (in functions, under TYPE_CHECKING), unless ``at_import_time``:
    then only those that run when the module is imported."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    imported: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if at_import_time and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if at_import_time and isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.Import):
                imported.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                imported.add(base)
                imported.update(f"{base}.{alias.name}" for alias in child.names if f"{base}.{alias.name}" in MODULES)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return imported - {module}


def _graph(*, at_import_time: bool = False) -> dict[str, set[str]]:
    """Each module of both packages -> the modules of both packages it imports (a package's
    ``__init__`` only where it is imported by name: ``from pipelines import x`` imports ``pipelines.x``)."""
    return {
        module: {
            name
            for name in _imports(module, at_import_time=at_import_time)
            if name in MODULES and not (name in PACKAGES and any(n.startswith(name + ".") for n in MODULES))
        }
        for module in MODULES
    }


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for neighbour in sorted(graph[node]):
            if neighbour not in index:
                connect(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_the_circle_finder_finds_a_circle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _circles(graph) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_from_function_level_and_type_checking_imports():
    graph = _graph()
    # `from pipelines.demo.job import main`; `from pipelines import atomic`.
    assert "pipelines.demo.job" in graph["pipelines.demo.__main__"]
    assert "pipelines.atomic" in graph["trainer.atomic"]
    # locks.py imports Beam's FileSystems inside a function (for remote paths alone), labels.py
    # the config's type under TYPE_CHECKING: both count for circles, neither at import time.
    assert "apache_beam.io.filesystems" in _imports("pipelines.locks")
    assert "apache_beam.io.filesystems" not in _imports("pipelines.locks", at_import_time=True)
    assert "pipelines.options" in graph["pipelines.labels"]
    assert "pipelines.options" not in _graph(at_import_time=True)["pipelines.labels"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle(package):
    graph = _graph()
    circles = [circle for circle in _circles(graph) if any(m.split(".")[0] == package for m in circle)]
    assert not circles, f"{package}: import circles (every import counts, also in functions): {circles}"


def _reachable(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def test_trainer_never_imports_beam_through_pipelines():
    # README's layout: "trainer/ ... never imports Beam" (tests/trainer/test_data.py checks it
    # at run time). What trainer imports of pipelines, and what those import in turn when
    # imported, stays free of apache_beam and of tf.Transform's Beam half.
    graph = _graph(at_import_time=True)
    loaded = _reachable(graph, {m for m in MODULES if m.split(".")[0] == "trainer"})
    offenders = {
        module: sorted(name for name in _imports(module, at_import_time=True) if _is_beam(name))
        for module in sorted(loaded)
    }
    assert not {m: names for m, names in offenders.items() if names}


def test_pipelines_never_imports_trainer_but_the_demo_that_runs_both():
    graph = _graph()
    upward = {
        module: sorted(name for name in graph[module] if name.startswith("trainer"))
        for module in graph
        if module.startswith("pipelines") and not module.startswith("pipelines.demo")
    }
    assert not {m: names for m, names in upward.items() if names}


def test_the_records_module_imports_only_the_standard_library():
    # pipelines/records.py holds the records the stages pass on and does no work: every stage
    # may import it, and it imports no stage (nor numpy, Beam or TensorFlow).
    imported = {name.split(".")[0] for name in _imports("pipelines.records")}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
