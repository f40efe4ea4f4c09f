"""Layering of the ``memplan`` package, checked on the source (``ast``; nothing is imported).

The import graph has one node per module of ``memplan/`` and an edge ``a -> b`` for every
import of ``b`` written in ``a``: at module level, inside functions (lazy imports) and under
``if TYPE_CHECKING``, plus ``importlib.import_module("memplan...")`` with a literal name.
``import memplan.x.y`` and ``from memplan.x import y`` (``y`` a submodule) import
``memplan.x.y``; ``from memplan.x import name`` (``name`` not a submodule) imports
``memplan.x`` (its ``__init__``). The packages above the imported module are not counted
(Python has them in ``sys.modules``, maybe half-initialised, before any submodule runs), with
one exception: ``from memplan import anything`` imports the package face, ``memplan/__init__``.

Rules:

1. no import cycle between modules of ``memplan/`` (lazy imports included: a function-level
   import hides a cycle, it does not remove one), but for the known ones being fixed
   (``KNOWN_CYCLES_BEING_FIXED``, ``KNOWN_CYCLE_EDGES_BEING_FIXED``), which only shrink;
2. the lower layers (``ir``, ``analysis``, ``passes``, ``solvers``, ``backends``, ``frontend``)
   never import the package face (``memplan``, ``memplan.api``, ``memplan.cli``);
   ``memplan.testing`` (tools that drive the public API, e.g. the ONNX conformance backend) may,
   and nothing outside it imports ``memplan.testing``;
3. ``memplan/solvers/`` is self-contained: no torch, no onnx, and of memplan only
   ``memplan.errors``, ``memplan.units`` and ``memplan.solvers.*``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1] / "memplan"
PACKAGE = "memplan"

# Cycles tolerated while being fixed (empty: there are none). A cycle is written from its smallest
# module name: ("memplan.a", "memplan.b") is memplan.a -> memplan.b -> memplan.a; an edge
# ("memplan.a", "memplan.b") tolerates every cycle through that import. Both lists only shrink
# (test_known_cycles_still_exist says when an entry is stale) and are for memplan/passes,
# memplan/backends and memplan/api.py only.
KNOWN_CYCLES_BEING_FIXED: frozenset[tuple[str, ...]] = frozenset()
KNOWN_CYCLE_EDGES_BEING_FIXED: frozenset[tuple[str, str]] = frozenset()

FACE = {"memplan", "memplan.api", "memplan.cli"}  # memplan.compiled and memplan.training sit beneath api
LOWER_LAYERS = ("ir", "analysis", "passes", "solvers", "backends", "frontend")
TESTING = "memplan.testing"  # above the face: drives the public API; nothing else imports it
SOLVERS_MAY_IMPORT = {"memplan.errors", "memplan.units"}
SOLVERS_MUST_NOT_IMPORT = ("torch", "onnx", "onnxruntime", "onnxscript")


# ---------------------------------------------------------------- the graph
def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover() -> dict[str, Path]:
    """Every module of ``memplan/`` (namespace packages' modules included) by dotted name."""
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py")) if "__pycache__" not in p.parts}


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def raw_imports(name: str, path: Path):
    """``(module, line, name)`` for every import in the module, wherever it is written:
    ``import a.b`` gives ``("a.b", line, None)``, ``from a import b, c`` gives ``("a", line, "b")``
    and ``("a", line, "c")``; relative imports are made absolute."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:  # the graph would miss its imports: no verdict without them
        raise AssertionError(f"cannot parse {path.relative_to(ROOT.parent)} (line {exc.lineno}: {exc.msg}); "
                             "the layering checks need every module") from None
    package = _package_of(name, path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                yield base, node.lineno, alias.name
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__") and node.args and \
                    isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.args[0].value, node.lineno, None


def resolve(base: str, imported: str | None, modules) -> list[str]:
    """The memplan modules one import (one name of a from-import) imports."""
    if base != PACKAGE and not base.startswith(PACKAGE + "."):
        return []
    if imported is None:  # import memplan.x.y
        return [base]
    targets = [PACKAGE] if base == PACKAGE else []  # from memplan import x: the face, whatever x is
    sub = f"{base}.{imported}"
    target = sub if sub in modules else base  # a submodule, or a name of the module / package
    if target not in targets:
        targets.append(target)
    return targets


def import_graph() -> nx.DiGraph:
    """The module import graph of ``memplan/``; each edge records the lines of its imports."""
    modules = discover()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for base, line, imported in raw_imports(name, path):
            for target in resolve(base, imported, modules):
                if target == name:
                    continue
                if graph.has_edge(name, target):
                    lines = graph[name][target]["lines"]
                    if line not in lines:
                        lines.append(line)
                        lines.sort()
                else:
                    graph.add_edge(name, target, lines=[line])
    return graph


def external_imports(path: Path) -> list[tuple[str, int]]:
    """Top-level names of the non-memplan modules a file imports (``torch`` for ``torch.nn``)."""
    out = []
    name = module_name(path)
    for base, line, imported in raw_imports(name, path):
        if base and base.split(".")[0] != PACKAGE:
            out.append((base.split(".")[0], line))
    return out


def canonical(cycle: list[str]) -> tuple[str, ...]:
    i = cycle.index(min(cycle))
    return tuple(cycle[i:] + cycle[:i])


def render(cycle: tuple[str, ...]) -> str:
    """``a -> b -> a``."""
    return " -> ".join(list(cycle) + [cycle[0]])


def all_cycles(graph: nx.DiGraph) -> list[tuple[str, ...]]:
    return sorted({canonical(c) for c in nx.simple_cycles(graph)}, key=lambda c: (len(c), c))


def edges_of(cycle: tuple[str, ...]) -> list[tuple[str, str]]:
    return list(zip(cycle, cycle[1:] + cycle[:1]))


def known(cycle: tuple[str, ...]) -> bool:
    return cycle in KNOWN_CYCLES_BEING_FIXED or any(e in KNOWN_CYCLE_EDGES_BEING_FIXED for e in edges_of(cycle))


def where(graph: nx.DiGraph, cycle: tuple[str, ...]) -> str:
    steps = list(cycle) + [cycle[0]]
    return "; ".join(f"{a} imports {b} at line {', '.join(map(str, graph[a][b]['lines']))}"
                     for a, b in zip(steps, steps[1:]))


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    try:
        return import_graph()
    except AssertionError as exc:
        pytest.fail(str(exc))


# ---------------------------------------------------------------- the rules
def test_graph_sees_the_package(graph):
    # guard against a parser that silently finds nothing
    assert {"memplan", "memplan.api", "memplan.ir.ops", "memplan.solvers.allocation"} <= set(graph)
    assert graph.has_edge("memplan", "memplan.api")
    assert graph.has_edge("memplan.compiled", "memplan.frontend.onnx")  # a lazy import counts


def test_no_import_cycles(graph):
    cycles = all_cycles(graph)
    new = [c for c in cycles if not known(c)]
    assert not new, (f"{len(new)} import cycle(s) between modules of memplan/ "
                     f"(first: {render(new[0])}):\n" +
                     "\n".join(f"  {render(c)}\n      ({where(graph, c)})" for c in new) +
                     f"\n({len(cycles) - len(new)} known cycles being fixed are not listed)")


def test_known_cycles_still_exist(graph):
    """The allow-list only shrinks: a cycle fixed is a cycle to delete from it."""
    cycles = all_cycles(graph)
    gone = [render(c) for c in sorted(KNOWN_CYCLES_BEING_FIXED) if c not in cycles]
    gone += [f"{a} -> {b} (closes no cycle any more)" for a, b in sorted(KNOWN_CYCLE_EDGES_BEING_FIXED)
             if not any((a, b) in edges_of(c) for c in cycles)]
    assert not gone, ("fixed: delete these from KNOWN_CYCLES_BEING_FIXED / KNOWN_CYCLE_EDGES_BEING_FIXED:\n  " +
                      "\n  ".join(gone))


def test_the_allow_list_holds_only_the_files_being_rewritten():
    def rewritten(module: str) -> bool:
        return module == "memplan.api" or module.split(".")[:2] in (["memplan", "passes"], ["memplan", "backends"])
    other = [render(c) for c in sorted(KNOWN_CYCLES_BEING_FIXED) if not all(rewritten(m) for m in c)]
    assert not other, "KNOWN_CYCLES_BEING_FIXED is for memplan/passes, memplan/backends and memplan/api.py:\n  " + \
        "\n  ".join(other)


def test_lower_layers_never_import_the_package_face(graph):
    bad = []
    for name in sorted(graph):
        parts = name.split(".")
        if len(parts) < 2 or parts[1] not in LOWER_LAYERS:
            continue
        for target in sorted(graph.successors(name)):
            if target in FACE:
                lines = ", ".join(map(str, graph[name][target]["lines"]))
                bad.append(f"{name} imports {target} (line {lines})")
    assert not bad, ("lower layers import the package face (memplan/__init__, memplan.api, memplan.cli); "
                     "import the module that defines the name instead:\n  " + "\n  ".join(bad))


def test_nothing_in_the_package_imports_the_testing_tools(graph):
    bad = [f"{a} imports {b} (line {', '.join(map(str, graph[a][b]['lines']))})"
           for a, b in sorted(graph.edges)
           if (b == TESTING or b.startswith(TESTING + ".")) and not (a == TESTING or a.startswith(TESTING + "."))]
    assert not bad, f"{TESTING} sits above the package face; nothing in memplan may import it:\n  " + "\n  ".join(bad)


def test_solvers_are_self_contained(graph):
    modules = discover()
    bad = []
    for name, path in sorted(modules.items()):
        if not name.startswith("memplan.solvers."):
            continue
        for target in sorted(graph.successors(name)):
            if target not in SOLVERS_MAY_IMPORT and not target.startswith("memplan.solvers."):
                bad.append(f"{name} imports {target} (line {', '.join(map(str, graph[name][target]['lines']))})")
        for top, line in external_imports(path):
            if top in SOLVERS_MUST_NOT_IMPORT:
                bad.append(f"{name} imports {top} (line {line})")
    assert not bad, ("memplan/solvers/ may import only memplan.errors, memplan.units and memplan.solvers.* "
                     "(no torch, no onnx):\n  " + "\n  ".join(bad))


def test_the_parser_counts_every_import_form(tmp_path, monkeypatch):
    pkg = tmp_path / "memplan"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from memplan.a import f\n")
    (pkg / "a.py").write_text("def f():\n    from memplan.sub import b\n    import memplan.sub.c as c\n")
    (pkg / "sub" / "__init__.py").write_text("from .b import g\n")
    (pkg / "sub" / "b.py").write_text("from memplan import a\nfrom ..sub import c\n")
    (pkg / "sub" / "c.py").write_text("import importlib\nimportlib.import_module('memplan.a')\n"
                                      "from memplan.sub import g\n")
    monkeypatch.setitem(globals(), "ROOT", pkg)
    g = import_graph()
    assert set(g.edges) == {("memplan", "memplan.a"), ("memplan.a", "memplan.sub.b"), ("memplan.a", "memplan.sub.c"),
                            ("memplan.sub", "memplan.sub.b"), ("memplan.sub.b", "memplan"),
                            ("memplan.sub.b", "memplan.a"), ("memplan.sub.b", "memplan.sub.c"),
                            ("memplan.sub.c", "memplan.a"), ("memplan.sub.c", "memplan.sub")}
    assert render(canonical(["memplan.b", "memplan.a"])) == "memplan.a -> memplan.b -> memplan.a"
