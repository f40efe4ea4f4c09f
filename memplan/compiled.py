"""Planning one inference graph: :func:`compile_graph` and :class:`CompiledModule` (the public
face, :mod:`memplan.api`, adds the training mode on top)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from memplan.backends.base import get_backend
from memplan.backends.mkldnn import prepack
from memplan.backends.pytorch import load_python
from memplan.errors import InputMismatchError, MemplanError, ModelLoadError
from memplan.ir.graph import Graph
from memplan.ir.printer import print_graph
from memplan.ir.types import TensorType
from memplan.passes import PassContext, run_pipeline
from memplan.analysis.check import verify_plan
from memplan.ir.verify import verify
from memplan.plan import Plan
from memplan.target import HardwareSpec, load_target
from memplan.units import parse_bytes


class CompiledModule:
    """A planned model: call it like the original.

    Attributes: ``graph`` (the final IR), ``plan``, ``ir`` (IR text),
    ``source`` (the emitted code: Python, or Triton kernels and their launcher), ``target``,
    ``backend`` (the backend that planned and emitted it).
    """

    def __init__(self, graph: Graph, plan: Plan, target: HardwareSpec, log: list[str], backend="pytorch"):
        self.graph = graph
        self.plan = plan
        self.target = target
        self.log = log
        self.backend = get_backend(backend)
        # every plan is checked before it runs, whatever made it; the code is printed from the IR alone
        verify(graph)  # types and shapes too: the checker trusts them, and out= kernels would resize slots
        check = verify_plan(graph, target)
        self.check = check  # the checker's figures (per-step profile, storages), for callers that need more
        self.source = self.backend.emit(graph, check)
        load = getattr(self.backend, "load", load_python)
        self._run = load(self.source, f"memplan_{graph.name}")
        self._weights = prepack(graph)

    @property
    def ir(self) -> str:
        return print_graph(self.graph)

    def check_inputs(self, args) -> tuple:
        """The inputs as the plan reads them; :class:`InputMismatchError` unless ``args`` match the
        graph inputs (count, dtype, shape, a CPU tensor).

        The plan was made for dense row-major (contiguous) inputs, as the example inputs are
        captured. An input of the right type in any other layout (transposed, expanded, sliced,
        channels-last) is copied to that layout first, as eager kernels would copy it internally:
        the result is the same, and the caller's tensor is never written. Where the example inputs
        were laid out so, the plan counts those copies (``attr input_copies``); an input passed in
        another layout than its example's costs its copy beyond the plan.
        """
        expected = self.graph.inputs
        if len(args) != len(expected):
            raise InputMismatchError(
                f"graph {self.graph.name!r} takes {len(expected)} inputs "
                f"({', '.join('%' + v.name + ': ' + str(v.type.with_space('')) for v in expected)}), got {len(args)}")
        ready = []
        for a, v in zip(args, expected):
            if not isinstance(a, torch.Tensor):
                raise InputMismatchError(f"input %{v.name} must be a tensor {v.type.with_space('')}, got {type(a).__name__}")
            if a.device.type != "cpu" or a.layout != torch.strided or a.is_quantized:
                raise InputMismatchError(f"input %{v.name} must be a dense CPU tensor {v.type.with_space('')}, got one on "
                                         f"device {a.device} with layout {a.layout}")
            got = TensorType.of(a)
            if got.dtype != v.type.dtype or (v.type.is_static and got.shape != v.type.shape) \
                    or len(got.shape) != len(v.type.shape):
                raise InputMismatchError(f"input %{v.name}: expected {v.type.with_space('')}, got {got}")
            if not a.is_contiguous() or a.storage_offset() < 0:
                a = a.contiguous()
            ready.append(a)
        return tuple(ready)

    def __call__(self, *args):
        """Run the plan. Outputs are ordinary tensors, as eager's under ``torch.no_grad()``: fresh
        unless eager's output is a view of an input, writable, usable in autograd."""
        args = self.check_inputs(args)
        with torch.no_grad():
            return self._run(self._weights, *args)

    def call_boxed(self, args: list):
        """Run the plan on the inputs in ``args``, a list it empties: an input that nothing else
        holds (an activation saved for backward) is freed at its last use, not at the end."""
        ready = list(self.check_inputs(args))
        args.clear()
        boxed = getattr(self._run, "boxed", None)
        with torch.no_grad():
            if boxed is None:
                return self._run(self._weights, *ready)
            return boxed(self._weights, ready)

    def __repr__(self) -> str:
        return (f"<CompiledModule {self.graph.name}: {len(self.plan.schedule)} steps on {self.target.name}, "
                f"{self.backend.name} backend>")


def _count_input_copies(graph: Graph, example_inputs) -> None:
    """Example inputs laid out other than row-major (channels-last images, transposed views) are
    copied to row-major when the module is called (:meth:`CompiledModule.check_inputs`): those
    copies live for the whole run, so the plan counts them (``attr input_copies``, bytes)."""
    if not isinstance(example_inputs, (tuple, list)) or len(example_inputs) != len(graph.inputs):
        return
    copies = 0
    for a, v in zip(example_inputs, graph.inputs):
        if isinstance(a, torch.Tensor) and a.layout == torch.strided and not a.is_contiguous():
            copies += a.numel() * a.element_size()
    if copies:
        graph.attrs["input_copies"] = copies


def lower(model_or_path, example_inputs=None) -> Graph:
    """Any supported model form → IR graph (frontend dispatch)."""
    if isinstance(model_or_path, Graph):
        return model_or_path
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if path.suffix.lower() != ".onnx":
            raise ModelLoadError(f"{str(path)!r}: memplan reads .onnx files (or takes a torch model in Python)")
        from memplan.frontend.onnx import from_onnx
        return from_onnx(path, example_inputs)
    try:
        import onnx
        if isinstance(model_or_path, onnx.ModelProto):
            from memplan.frontend.onnx import from_onnx
            return from_onnx(model_or_path, example_inputs)
    except ImportError:  # onnx is a dependency; keep torch-only use working without it
        pass
    from memplan.frontend.torch_export import from_torch
    return from_torch(model_or_path, example_inputs)


def compile_graph(model_or_path, example_inputs=None, target="cpu", memory_budget=None, *,
                  pipeline: list[str] | None = None, dump_ir_after=None, dump_dir=None,
                  verify_each: bool = False, options: dict | None = None, backend="pytorch") -> CompiledModule:
    """Lower, plan and build one graph for inference (``memplan.compile`` documents the arguments)."""
    spec = load_target(target)
    budget = parse_bytes(memory_budget) if memory_budget is not None else None
    start = time.perf_counter()
    graph = lower(model_or_path, example_inputs)
    _count_input_copies(graph, example_inputs)
    lowered = time.perf_counter() - start
    ctx = PassContext(spec, budget, dict(options or {}), backend=get_backend(backend))
    graph, plan = run_pipeline(graph, ctx, pipeline, dump_after=dump_ir_after, dump_dir=dump_dir,
                               verify_each=verify_each)
    plan.stats["pass_seconds"] = {"lower": lowered, **plan.stats.get("pass_seconds", {})}
    if not isinstance(graph, Graph):
        raise MemplanError("pipeline did not return a graph")
    log_lines = getattr(ctx.backend, "log_lines", None)
    if log_lines is not None:
        ctx.log.extend(line for line in log_lines(graph) if line not in ctx.log)
    return CompiledModule(graph, plan, spec, ctx.log, ctx.backend)
