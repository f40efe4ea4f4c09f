"""Kernel choice of the Triton backend: which nodes of a planned graph run as Triton kernels.

A node becomes a kernel when a template covers it: an elementwise region (``memplan.loop`` made by
``fuse``, or ``memplan.group``) whose every body op has a translation (:mod:`.pointwise`), an
attention loop (made by ``attention``: one FlashAttention kernel, :mod:`.attention`), a matrix
product with its epilogue (:mod:`.matmul`), or a row reduction (:mod:`.reductions`). Every other
node runs as the PyTorch backend runs it (aten, oneDNN, a region's per-trip PyTorch code). The choice is a function of the node alone, so the
planner (asking for scratch) and the emitter (printing kernels) always agree on it; the reason a
region stays on PyTorch is kept for the log.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from memplan.backends.pytorch import identifier
from memplan.backends.triton.attention import attention_kernel, is_attention
from memplan.backends.triton.codegen import Kernel, NotTranslatable, comment_lines
from memplan.backends.triton.matmul import is_matmul_group, matmul_kernel
from memplan.backends.triton.pointwise import HELPER_SOURCE, pointwise_kernel
from memplan.backends.triton.reductions import REDUCTIONS, group_reduction_kernel, reduction_of
from memplan.ir.graph import Graph, Node
from memplan.ir.regions import REGION_OPS


@dataclass
class KernelChoice:
    """The kernels of a graph (by node name, in graph order) and, per region or reduction left to
    PyTorch, why."""

    kernels: dict[str, Kernel] = field(default_factory=dict)
    not_kernels: dict[str, str] = field(default_factory=dict)

    def log_lines(self) -> list[str]:
        """One line for the compile log: what runs as kernels, and each region left to PyTorch and why."""
        count: dict[str, int] = {}
        for k in self.kernels.values():
            if is_attention(k.node):
                kind = "attention"
            elif is_matmul_group(k.node):
                kind = "matmul with its epilogue"
            elif reduction_of(k.node) is not None:
                red = reduction_of(k.node)
                kind = red.op.split(".")[1].lstrip("_") + (" with its prologue" if red is k.node.subgraph.nodes[-1]
                                                           else " with its prologue and epilogue")
            elif k.node.op in REGION_OPS:
                kind = "pointwise"
            else:
                kind = k.node.op.split(".")[1].lstrip("_")
            count[kind] = count.get(kind, 0) + 1
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(count.items()))
        lines = [f"triton: {len(self.kernels)} kernels ({kinds or 'none'})"]
        lines += [f"triton: node {name} runs on PyTorch: {why}" for name, why in self.not_kernels.items()]
        return lines


def kernel_for(node: Node, name: str, canonical: bool = False) -> Kernel:
    """The kernel of ``node`` named ``name``; :class:`NotTranslatable` (with the reason) if no template
    covers it. ``canonical``: its locals named by position, not after IR values (to compare kernels)."""
    if is_attention(node):
        return attention_kernel(node, name, canonical)
    if is_matmul_group(node):  # a matrix product with its elementwise epilogue
        return matmul_kernel(node, name, canonical)
    if reduction_of(node) is not None:  # a row reduction after its prologue (before its epilogue)
        return group_reduction_kernel(node, name)
    if node.op in REGION_OPS:
        return pointwise_kernel(node, name, canonical)
    template = REDUCTIONS.get(node.op)
    if template is None:
        raise NotTranslatable("no Triton template for this op")
    if any(not v.type.is_static for v in node.inputs + list(node.outputs)):
        raise NotTranslatable("symbolic shapes")
    return template(node, name)


def choose_kernels(graph: Graph, share: bool = True) -> KernelChoice:
    """The nodes of ``graph`` (its top level) that run as Triton kernels, each with its kernel. Nodes
    whose kernels are the same code (the same template over the same dims: the layer norms of every
    block, the MLP activations of every layer) launch one shared function (``share=False``: each its
    own, and no time spent comparing: the planner only asks which nodes are kernels)."""
    choice = KernelChoice()
    names: dict[tuple, str] = {}  # kernel code -> the function's name
    for node in graph.nodes:
        if node.op not in REGION_OPS and node.op not in REDUCTIONS:
            continue
        label = identifier(node.name if node.op in REGION_OPS else node.op.split(".")[1].lstrip("_"))
        try:
            kernel = kernel_for(node, f"kernel_{len(names)}_{label}")
        except NotTranslatable as why:
            choice.not_kernels[node.name] = str(why)
            continue
        if share:
            key = kernel_for(node, "kernel", canonical=True).key if node.op in REGION_OPS else kernel.key
        else:
            key = (node.name,)
        kernel.name = names.setdefault(key, kernel.name)
        choice.kernels[node.name] = kernel
    return choice


def kernel_module(graph_name: str, choice: KernelChoice) -> list[str]:
    """The lines of the kernel module: the interpreter switch, imports, helpers, one function per
    distinct kernel, its comment naming the IR it runs."""
    from memplan.backends.pytorch import comment_text

    functions: dict[str, list[Kernel]] = {}
    for kernel in choice.kernels.values():
        functions.setdefault(kernel.name, []).append(kernel)
    lines = [f"# memplan: Triton kernels of graph {comment_text(graph_name)}: {len(functions)} kernels for "
             f"{len(choice.kernels)} nodes",
             "import os",
             "",
             "import torch",
             "",
             "if not torch.cuda.is_available():",
             "    # no GPU: Triton's interpreter runs the kernels (exact, slow). Triton reads this when",
             "    # @triton.jit runs, so it is set before the kernels below are defined.",
             "    os.environ.setdefault(\"TRITON_INTERPRET\", \"1\")",
             "",
             "import triton  # noqa: E402",
             "import triton.language as tl  # noqa: E402",
             ""]
    helpers = sorted({h for k in choice.kernels.values() for h in k.helpers})
    for h in helpers:
        lines += ["", *HELPER_SOURCE[h], ""]
    for name, kernels in functions.items():
        first = kernels[0]
        lines += ["", f"# {name}: {comment_text(first.summary)}"]
        lines += [f"#   {line}" for line in first.covers]
        if len(kernels) > 1:
            also = ", ".join(f"%{k.node.name}" + (f" ({k.node.source})" if k.node.source else "") for k in kernels[1:])
            lines += [f"#   {line}" for line in comment_lines(f"also launched for {len(kernels) - 1} more: {also}")]
        lines += [*first.code(), ""]
    return lines
