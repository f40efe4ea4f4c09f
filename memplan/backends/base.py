"""The backend contract: what every backend gives the planner and the pipeline.

A backend knows its kernels, so it answers the questions that depend on them:

- ``legalize(graph, ctx) -> graph``: kernel choice, as IR rewrites (the PyTorch backend runs 2-D
  convolutions by oneDNN, lowers others to im2col + GEMM where that plans lower);
- ``writes_into(node) -> bool``: can the kernel of ``node`` write its results into buffers it is
  given? Only then can they be planned in a slot of a storage; otherwise they are kernel-owned;
- ``scratch(graph, slotted, options, log, only=None) -> {node: bytes}``: what each kernel (of
  ``only``, if given) allocates beyond its outputs when the values of ``slotted`` are written into
  given buffers and the others are kernel-owned (``Node.scratch`` of the planned IR);
- ``emit(graph) -> str``: the planned IR printed as source; nothing but the IR is read.

A backend may also give ``load(source, module_name) -> run``, the loader of what it emits (default:
the PyTorch backend's :func:`~memplan.backends.pytorch.load_python`), and ``emit_files(graph, stem)
-> {file name: source}`` where its output is more than one file (the Triton backend: kernels and
launcher).

A backend may say ``one_kernel_regions = True``: it runs a fused region as one kernel (its
intermediates never in memory, one launch), so the roofline model (:mod:`memplan.analysis.cost`)
charges a region its boundary's bytes, and ``fuse`` forms regions too small to tile as one trip.

The planner never asks anything else of a backend; a backend never re-derives a decision.
"""
from __future__ import annotations

from typing import Protocol

from memplan.errors import MemplanError
from memplan.ir.graph import Graph, Node


class Backend(Protocol):
    name: str

    def legalize(self, graph: Graph, ctx) -> Graph: ...

    def writes_into(self, node: Node) -> bool: ...

    def scratch(self, graph: Graph, slotted: set[str], options: dict, log: list[str] | None = None,
                only: set[str] | None = None) -> dict[str, int]: ...

    def emit(self, graph: Graph) -> str: ...


BACKENDS = ("pytorch", "triton")


def get_backend(name: "str | Backend" = "pytorch") -> Backend:
    """A backend by name (``pytorch``, ``triton``), or the object itself if it already is one."""
    if not isinstance(name, str):
        return name
    if name == "pytorch":
        from memplan.backends.pytorch import PyTorchBackend
        return PyTorchBackend()
    if name == "triton":
        from memplan.backends.triton import TritonBackend
        return TritonBackend()
    raise MemplanError(f"unknown backend {name[:40]!r}; backends: {', '.join(BACKENDS)}")
