"""The Triton backend object (:mod:`memplan.backends.base`'s contract)."""
from __future__ import annotations

from memplan.backends.pytorch import PyTorchBackend
from memplan.backends.triton.kernels import choose_kernels
from memplan.backends.triton.launcher import emit_triton, load_triton
from memplan.ir.graph import Graph


class TritonBackend:
    """Triton kernels for fused elementwise regions, row reductions (with their prologue) and attention
    loops (FlashAttention), aten for the rest.

    - ``legalize`` and ``writes_into``: the PyTorch backend's (the nodes left to aten run as it
      runs them; a Triton kernel writes into any buffer it is given);
    - ``scratch``: 0 for the nodes that become kernels (a kernel holds registers only and writes its
      outputs straight into their planned buffers), the PyTorch backend's measured scratch for
      every other node;
    - ``emit``: the kernels and the launcher as one Python module (:meth:`emit_files`: two files).
    """

    name = "triton"
    one_kernel_regions = True  # a fused region is one kernel launch moving only its boundary's bytes

    def __init__(self):
        self._pytorch = PyTorchBackend()

    def legalize(self, graph: Graph, ctx) -> Graph:
        """The PyTorch backend's kernel choice for the nodes aten runs (oneDNN convolutions)."""
        return self._pytorch.legalize(graph, ctx)

    def writes_into(self, node) -> bool:
        """As the PyTorch backend (a kernel writes into the buffers it is given, as a loop does)."""
        return self._pytorch.writes_into(node)

    def scratch(self, graph: Graph, slotted: set[str], options: dict, log: list[str] | None = None,
                only: set[str] | None = None) -> dict[str, int]:
        """Scratch per node: none for a kernel; what the PyTorch backend measures for the others."""
        kernels = choose_kernels(graph, share=False).kernels
        rest = {n.name for n in graph.nodes if n.name not in kernels}
        if only is not None:
            rest &= set(only)
        return self._pytorch.scratch(graph, slotted, options, log, rest)

    def emit(self, graph: Graph, check=None) -> str:
        """The planned IR as one module: the Triton kernels, then the launcher's ``run(weights, *inputs)``."""
        kernels, launcher = emit_triton(graph, check)
        return kernels + "\n\n" + launcher

    def emit_files(self, graph: Graph, stem: str, check=None) -> dict[str, str]:
        """``{file name: source}``: ``<stem>_kernels.py`` and ``<stem>_launcher.py``, which imports the
        kernels from the first (``stem`` is made an identifier)."""
        from memplan.backends.pytorch import identifier

        base = identifier(stem)
        kernels, launcher = emit_triton(graph, check, kernels_module=f"{base}_kernels")
        return {f"{base}_kernels.py": kernels, f"{base}_launcher.py": launcher}

    def load(self, source: str, module_name: str = "memplan_triton"):
        """The ``run`` function of an emitted module (:meth:`emit`)."""
        return load_triton(source, module_name)

    def log_lines(self, graph: Graph) -> list[str]:
        """What runs as kernels in the planned ``graph``, and each region left to PyTorch and why."""
        return choose_kernels(graph).log_lines()
