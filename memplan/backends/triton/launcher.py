"""The launcher: the planned IR printed as Python that launches Triton kernels and calls aten.

It is the PyTorch backend's emitted module (:func:`memplan.backends.pytorch.emit_python`: one
``torch.empty`` per storage, each value a view at its planned slot or its own buffer, ``del`` at
the last use of every value outside a storage) with one difference: a node the Triton backend runs
as a kernel (:mod:`.kernels`) binds its output buffers exactly as that module would (a slot, an own
buffer, the input it overwrites, or a fresh tensor for a kernel-owned result) and launches its
kernel on them, once, instead of calling aten or running a per-trip loop.
"""
from __future__ import annotations

import itertools
import linecache

from memplan.backends.pytorch import (_RESERVED, _Names, _buffer, _check_emittable, _function, _plan_check,
                                      comment_text, fresh, identifier, plan_comment)
from memplan.backends.triton.kernels import KernelChoice, choose_kernels, kernel_module
from memplan.ir.graph import Graph
from memplan.ir.regions import LOOP, loop_spec

# names the launcher module binds besides the PyTorch module's: a value's variable never takes one
_LAUNCHER_WORDS = frozenset({"triton", "tl", "os", "use_interpreter"})
_counter = itertools.count()


class LauncherNames(_Names):
    """The PyTorch backend's value names, also kept clear of the kernel module's names."""

    def __init__(self):
        super().__init__()
        self.used |= _LAUNCHER_WORDS

    def __call__(self, v) -> str:
        if v.name not in self.map:
            base = identifier(v.name)
            if (base in _RESERVED or base in _LAUNCHER_WORDS or base == "t"
                    or base.startswith(("__", "storage_", "region_", "trip_", "kernel_", "_tanh"))):
                base = "v_" + base
            self.map[v.name] = self.unique(base)
        return self.map[v.name]


def emit_triton(graph: Graph, check=None, kernels_module: str | None = None) -> tuple[str, str]:
    """(kernel source, launcher source) of the planned IR ``graph``.

    The launcher defines ``run(weights, *inputs)``. With ``kernels_module`` it imports the kernels
    from that module (two files); without, it expects them in its own namespace (one module: the
    kernel source followed by the launcher, as :meth:`TritonBackend.emit` gives it).
    """
    _check_emittable(graph)
    check = check if check is not None else _plan_check(graph)
    choice = choose_kernels(graph)
    kernels = "\n".join(kernel_module(graph.name, choice)) + "\n"
    return kernels, _launcher(graph, choice, check, kernels_module)


def _launcher(graph: Graph, choice: KernelChoice, check, kernels_module: str | None) -> str:
    target = graph.attrs.get("target")
    lines = [f"# memplan: launcher of graph {comment_text(graph.name)}"
             f"{' on target ' + comment_text(target) if target else ''}, {len(graph.nodes)} steps, "
             f"{len(choice.kernels)} of them Triton kernels"]
    lines += plan_comment(check)
    lines += ["from math import inf, nan", "", "import torch", ""]
    if kernels_module is not None:
        lines += ["from memplan.backends.triton.runtime import fresh, memplan_ops, use_interpreter  # noqa: F401", "",
                  "use_interpreter()  # no GPU: Triton's interpreter, set up before the kernels are defined"]
        functions = list(dict.fromkeys(k.name for k in choice.kernels.values()))
        if functions:
            lines.append(f"from {kernels_module} import ({', '.join(functions)},)  # noqa: E402")
        lines.append("")
    lines += ["aten = torch.ops.aten", "", ""]
    functions: list[list[str]] = []
    main_fn = _run_function(graph, choice, functions)
    for fn in functions:
        lines += fn + ["", ""]
    lines += main_fn
    return "\n".join(lines) + "\n"


def _run_function(graph: Graph, choice: KernelChoice, functions: list[list[str]]) -> list[str]:
    """``def run(weights, *inputs)``: every node in its planned order (the PyTorch backend's statements),
    the nodes that are kernels launched."""
    def launch(node, names, comment):
        kernel = choice.kernels.get(node.name)
        return None if kernel is None else _launch_step(node, kernel, names, comment)
    return _function(graph, "run", functions, weights=True, names=LauncherNames(), emit_step=launch)


def _launch_step(node, kernel, names, comment: str) -> list[str]:
    """Bind the node's output buffers as the PyTorch backend would, then launch its kernel once."""
    if node.reuses is not None:  # written over the input it reads, element by element
        lines = [f"{names(node.outputs[0])} = {names(node.reuses)}"]
    else:
        lines = [f"{names(v)} = {_buffer(v)}" for v in node.outputs]
    if node.op == LOOP:
        what = f"Triton: all {loop_spec(node).trips} trips in one launch"
    else:
        what = "Triton"
    return lines + kernel.launch(names, f"{comment} ({what})")


def load_triton(source: str, module_name: str = "memplan_triton"):
    """Compile an emitted kernel + launcher module; return its ``run`` function. The source is
    registered with :mod:`linecache`: ``@triton.jit`` reads a kernel's source through :mod:`inspect`,
    and tracebacks show it."""
    from memplan.backends.triton.runtime import CollectingLaunch, memplan_ops, use_interpreter

    try:
        import triton  # noqa: F401
    except ImportError as exc:
        from memplan.errors import MemplanError
        raise MemplanError(f"the Triton backend needs the triton package, which cannot be imported ({exc}); "
                           "install it (pip install 'memplan[triton]') or use backend='pytorch'") from None
    interpreted = use_interpreter()  # no GPU: before the module's @triton.jit runs (it sets the variable too)
    filename = f"<{module_name}_{next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": module_name, "memplan_ops": memplan_ops, "fresh": fresh}
    exec(compile(source, filename, "exec"), namespace)
    run = namespace["run"]
    if not interpreted:
        return run
    for name, value in list(namespace.items()):
        if name.startswith("kernel_") and hasattr(value, "__getitem__"):
            namespace[name] = CollectingLaunch(value)

    def run_interpreted(*args):
        # the interpreter computes with numpy, which warns where IEEE arithmetic gives inf or nan
        # (log(0) in T5's position buckets); aten gives the same values silently
        import numpy
        with numpy.errstate(all="ignore"):
            return run(*args)
    return run_interpreted
