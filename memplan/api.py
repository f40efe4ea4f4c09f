"""The public API: :func:`compile`, :func:`lower` and :class:`CompiledModule`."""
from __future__ import annotations

from memplan.compiled import CompiledModule, compile_graph, lower
from memplan.errors import MemplanError
from memplan.target import load_target


def compile(model_or_path, example_inputs=None, target="cpu", memory_budget=None, *,
            pipeline: list[str] | None = None, dump_ir_after=None, dump_dir=None,
            verify_each: bool = False, options: dict | None = None, backend="pytorch", mode: str = "inference"):
    """Lower, plan and build a model.

    ``model_or_path``: an ``nn.Module`` (with ``example_inputs``), an
    ``ExportedProgram``, an ``fx.GraphModule``, an ``onnx.ModelProto`` or a
    path to an ``.onnx`` file. ``target``: a preset name, a YAML/JSON spec
    path or a :class:`HardwareSpec`. ``memory_budget``: bytes (int) or a
    string such as ``"2GiB"`` — a hard bound on the planned activation peak;
    :class:`~memplan.errors.BudgetInfeasibleError` if no plan fits.
    ``options`` tune passes: ``schedule_method`` (``auto``, ``exact``,
    ``heuristic``, ``baseline``, ...), ``schedule_time_limit`` and
    ``allocate_time_limit`` (seconds), ``measure_scratch`` (bool), ``allocation``
    (``auto``: the lower planned peak of a static storage and of freeing each
    value at its last use; ``storage`` or ``free`` to force one). ``backend``:
    ``"pytorch"`` (default: readable Python of aten calls) or ``"triton"``
    (fused regions and row reductions as Triton kernels, launched by a Python
    launcher that calls aten for the rest; without a GPU the kernels run in
    Triton's interpreter); the planner asks the backend what scratch its
    kernels need. ``mode="train"``: a :class:`~memplan.training.TrainModule` whose
    forward and backward run planned code (an ordinary ``loss.backward(); opt.step()``
    loop works), the budget bounding each training step's planned peak.

    >>> import torch, memplan
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU())
    >>> cm = memplan.compile(model, (torch.randn(2, 8),), memory_budget="1MiB")
    >>> torch.allclose(cm(torch.ones(2, 8)), model(torch.ones(2, 8)))
    True
    """
    if mode not in ("inference", "train"):
        raise MemplanError(f"mode must be 'inference' or 'train', got {mode!r}")
    if mode == "train":
        if pipeline is not None or dump_ir_after is not None:
            raise MemplanError("mode='train' takes no pipeline or dump_ir_after (each graph runs the default one)")
        from memplan.training import compile_train
        load_target(target)  # a bad target fails now, not at the first step
        return compile_train(model_or_path, example_inputs, target, memory_budget, options=options, backend=backend)
    return compile_graph(model_or_path, example_inputs, target, memory_budget, pipeline=pipeline,
                         dump_ir_after=dump_ir_after, dump_dir=dump_dir, verify_each=verify_each, options=options,
                         backend=backend)


__all__ = ["compile", "lower", "CompiledModule"]
