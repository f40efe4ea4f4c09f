"""The pass registry: every pass registers here by name, with its options dataclass and what it
requires and produces, so the pipeline runner (:mod:`memplan.passes.manager`), the CLI and
``memplan passes`` can find, check, configure and list it. Pass modules import this module, never
the runner (which imports them).

    @register_pass("canonicalize")
    def canonicalize(graph, ctx): ...
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from memplan.errors import MemplanError
from memplan.target import HardwareSpec


@dataclass(frozen=True)
class Pass:
    """A registered pass: ``fn(graph, ctx) -> graph``; ``options`` its options dataclass (None: it
    takes none); ``requires`` what an earlier pass of the pipeline must have produced; ``produces``
    what it establishes (names such as ``order``, ``allocation``)."""

    name: str
    kind: str  # "graph"
    fn: Callable
    doc: str = ""
    options: type | None = None
    requires: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()  # passes it runs inside (their options are its options too)


PASSES: dict[str, Pass] = {}


def register_pass(name: str, kind: str = "graph", *, options: type | None = None,
                  requires: tuple[str, ...] = (), produces: tuple[str, ...] = (), includes: tuple[str, ...] = ()):
    """Decorator registering ``fn(graph, ctx) -> graph`` as pass ``name`` with its options dataclass
    and what it requires and produces."""
    if kind != "graph":
        raise ValueError(f"a pass rewrites the graph (kind 'graph'), got {kind!r}")

    def wrap(fn):
        PASSES[name] = Pass(name, kind, fn, (fn.__doc__ or "").strip().split("\n")[0], options,
                            tuple(requires), tuple(produces), tuple(includes))
        return fn
    return wrap


def option_passes(names: list[str]) -> list[Pass]:
    """The passes whose options a pipeline takes: its passes and those they run inside."""
    out: list[Pass] = []
    for n in names:
        out.append(PASSES[n])
        out.extend(PASSES[i] for i in PASSES[n].includes if i in PASSES)
    return out


def check_pipeline(names: list[str]) -> None:
    """Every pass name is registered and every pass's requirements are produced by an earlier pass."""
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise MemplanError(f"unknown pass {unknown[0][:60]!r}; passes: {', '.join(sorted(PASSES))}")
    produced: set[str] = set()
    for n in names:
        missing = [r for r in PASSES[n].requires if r not in produced]
        if missing:
            makers = sorted(p.name for p in PASSES.values() if missing[0] in p.produces)
            raise MemplanError(f"pipeline: pass {n!r} requires {missing[0]!r}, which no earlier pass produces "
                               f"(run {' or '.join(makers) or 'a pass that makes it'} before it)")
        produced.update(PASSES[n].produces)


@dataclass
class PassContext:
    """What passes may read: the target, the budget and options; ``log`` collects reasons."""

    target: HardwareSpec
    memory_budget: int | None = None
    options: dict = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    records: dict = field(default_factory=dict)  # solver records and figures for the Plan report
    backend: object = None  # the Backend (memplan.backends.base); None: the PyTorch one (get_backend)

    def run_pass(self, name: str, graph):
        """Run registered pass ``name`` on ``graph`` (a backend's ``legalize`` runs its passes so)."""
        return PASSES[name].fn(graph, self)

    def get_backend(self):
        """The backend planning is for (the PyTorch one unless the context names another)."""
        if self.backend is None:
            from memplan.backends.base import get_backend
            self.backend = get_backend("pytorch")
        return self.backend


DEFAULT_PIPELINE = ["verify", "fold_batchnorm", "legalize", "canonicalize", "fold_constants", "lower_conv",
                    "attention", "fuse", "inplace", "schedule", "allocate", "verify_plan"]
