"""Training through planned code: ``memplan.compile(model, x, mode="train", memory_budget=...)`` and
``torch.compile(model, backend=memplan.backend(...))``.

AOTAutograd (``torch._dynamo.backends.common.aot_autograd``) traces the joint forward and backward
of what Dynamo captured and partitions it into a forward graph (parameters and inputs in; outputs
and the activations saved for backward out) and a backward graph (saved activations and output
gradients in; gradients out). memplan plans and emits each like an inference graph, and
AOTAutograd's ``autograd.Function`` runs them, so an ordinary loop (``loss_fn(cm(x), y).backward();
opt.step()``) works unchanged and the parameters' ``.grad`` are eager's.

The budget bounds the training step. Each graph's storage lives while it runs; what crosses from
forward to backward is the saved activations (the forward's outputs). So the step's peak is the
larger of the forward's planned peak (its outputs included) and the backward's planned peak plus
what it reads that the forward made: saved activations, output gradients and the outputs the
caller holds. :func:`step_peak` computes it. Under a budget, memplan's partitioner tries
partitions that save less and recompute more (AOTAutograd's own default first, then its min-cut
partitioner at lowering ``activation_memory_budget``), plans both graphs of each within the bytes
left to them, and takes the first whose step peak fits; where none does,
:class:`~memplan.errors.BudgetInfeasibleError` gives the smallest step peak found.

Dropout draws its mask once, in the forward; a partition whose backward would draw it again is
not taken. Under a budget the step must be one graph (``fullgraph``): a graph break is an error, not
code outside the plan. The budget covers the module's forward and backward and its outputs; the
caller's loss (its own forward and backward) is the caller's code, outside it.

Not yet (issue 11): memplan's own recomputation solver on the joint graph (``memplan remat``
solves such instances standalone), the optimizer in the plan.
"""
from __future__ import annotations

import itertools
import types
from dataclasses import dataclass, field

import torch

from memplan.errors import BudgetInfeasibleError, MemplanError
from memplan.ir.ops import RANDOM_PACKETS

# partitions tried under a budget, in order: AOTAutograd's default (saves what backward reads), then
# its min-cut partitioner at each activation_memory_budget (a fraction of the saved bytes it keeps)
KNOBS = (None, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0)


def _tensor_bytes(node) -> int:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    if isinstance(val, torch.Tensor):
        return int(val.numel()) * val.element_size()
    return 0


def _dense_order(a) -> list[int] | None:
    """The permutation ``perm`` with ``a.permute(perm)`` contiguous, for a tensor ``a`` that is a
    transposed view (a saved ``weight.t()``); None where ``a`` is contiguous or no permutation
    makes it so (an expanded or sliced view)."""
    if not isinstance(a, torch.Tensor) or a.is_contiguous() or a.dim() < 2:
        return None
    perm = sorted(range(a.dim()), key=lambda d: (-int(a.stride(d)), -int(a.shape[d])))
    dense = a.permute(perm)
    return perm if dense.is_contiguous() else None


def _span(a):
    """(shape, strides, extent) of a non-contiguous tensor ``a`` read through the 1-D run of
    elements it spans (a saved q sliced from a fused qkv projection: its storage lives anyway,
    where a row-major copy would cost its size again), or None (contiguous, or strides that
    overlap or run backwards)."""
    if not isinstance(a, torch.Tensor) or a.is_contiguous() or a.numel() == 0:
        return None
    shape, stride = tuple(int(d) for d in a.shape), tuple(int(s) for s in a.stride())
    if any(s < 0 for s in stride):
        return None
    extent = 1 + sum((n - 1) * s for n, s in zip(shape, stride))
    return shape, stride, extent


def _as_laid_out(a: torch.Tensor, shape, stride) -> torch.Tensor:
    """``a`` with exactly ``stride`` (a copy only where its own strides differ)."""
    if tuple(a.stride()) == tuple(stride):
        return a
    out = torch.empty_strided(shape, stride, dtype=a.dtype, device=a.device)
    out.copy_(a)
    return out


def _prepare(gm: torch.fx.GraphModule, examples: list):
    """A copy of ``gm`` for memplan: only its tensor outputs (the backward returns None for inputs
    that need no gradient), and each transposed input taken in its dense order and permuted back
    inside (a saved ``weight.t()`` is read where it lies, not copied to row-major). Returns the copy,
    its example inputs, the kept output positions, the output count and the input permutations."""
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    outs = out_node.args[0]
    flat = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    keep = [i for i, o in enumerate(flat) if isinstance(o, torch.fx.Node)]
    if not keep:
        raise MemplanError("a captured graph returns no tensor")
    graph = torch.fx.Graph()
    env: dict = {}
    perms: list = []
    ready = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, a in zip(placeholders, examples):
        perm = _dense_order(a)
        span = _span(a) if perm is None else None
        perms.append(("permute", perm) if perm is not None else ("span", span) if span is not None else None)
        if perm is not None:
            base = graph.placeholder(f"{node.name}_dense")
            inverse = sorted(range(len(perm)), key=perm.__getitem__)
            env[node] = graph.call_function(torch.ops.aten.permute.default, (base, inverse))
            ready.append(a.permute(perm))
        elif span is not None:  # a slice or a strided view: the elements it spans, viewed inside
            base = graph.placeholder(f"{node.name}_span")
            shape, stride, extent = span
            # no storage offset: as_strided then starts where the span does (the span of k from a fused
            # qkv projection starts 256 elements into the storage)
            env[node] = graph.call_function(torch.ops.aten.as_strided.default, (base, list(shape), list(stride)))
            ready.append(a.as_strided((extent,), (1,), a.storage_offset()))
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
            ready.append(a)
    relaid = any(isinstance(a, torch.Tensor) and not a.is_contiguous() for a in ready)
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.target in _STRIDED and relaid:
            raise MemplanError(f"training graph node {node.name} ({node.target}) addresses its input by strides, and an "
                               "input of the graph is laid out in a way memplan copies to row-major; not supported yet")
        copy = graph.node_copy(node, lambda n: env[n])
        if node.target is torch.ops.aten.view.default:
            # AOTAutograd's views assume its inputs' strides; memplan lays a strided input out row-major (a
            # saved slice of q from a fused projection), so a view may no longer apply: a reshape is a
            # view wherever one applies and a copy where not, the same values
            copy.target = torch.ops.aten.reshape.default
        env[node] = copy
    graph.output(tuple(env[flat[i]] for i in keep))
    return torch.fx.GraphModule(gm, graph), ready, keep, len(flat), perms


_STRIDED = (torch.ops.aten.as_strided.default, torch.ops.aten.as_strided_scatter.default)


def _real(a):
    """A real tensor like the example ``a`` (values: small normals for floats, zeros otherwise)."""
    if not isinstance(a, torch.Tensor):
        return a
    shape, stride = tuple(int(d) for d in a.shape), tuple(int(s) for s in a.stride())
    extent = 1 + sum((n - 1) * abs(s) for n, s in zip(shape, stride)) if all(shape) else 0
    base = torch.empty(extent, dtype=a.dtype, device="cpu" if a.device.type == "meta" else a.device)
    with torch.no_grad():  # filled as a run of elements: an expanded (stride-0) layout cannot be written
        if a.dtype.is_floating_point or a.dtype.is_complex:
            base.normal_()
        else:
            base.zero_()
    return base.as_strided(shape, stride) if all(s >= 0 for s in stride) else base[:0].new_zeros(shape)


def _plan_graph(gm: torch.fx.GraphModule, example_inputs, compile_kwargs: dict, budget=None):
    """memplan's CompiledModule of ``gm`` (None outputs stripped) and a boxed runner that puts them
    back, as AOTAutograd calls it."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from memplan.compiled import compile_graph as memplan_compile
    from memplan.ir.ops import allow_random

    with unset_fake_temporarily():  # AOTAutograd hands fake tensors; memplan runs what it plans
        examples = [_real(a) for a in example_inputs]
        stripped, examples, keep, total, perms = _prepare(gm, examples)
        kwargs = dict(compile_kwargs)
        if budget is not None:
            kwargs["memory_budget"] = max(0, int(budget))
        with allow_random():  # a dropout draws its mask once, in the forward (never recomputed)
            cm = memplan_compile(stripped, tuple(examples), **kwargs)
    relaid = [(i, p) for i, p in enumerate(perms) if p is not None]

    def run(args):
        for i, (how, p) in relaid:
            if how == "permute":
                args[i] = args[i].permute(p)
            else:  # no local keeps the tensor: the list holds its only reference, freed at its last read
                shape, stride, extent = p
                args[i] = _as_laid_out(args[i], shape, stride)
                args[i] = args[i].as_strided((extent,), (1,), args[i].storage_offset())
        results = cm.call_boxed(args)  # empties args: each input is freed at its last use
        results = results if isinstance(results, tuple) else (results,)
        full = [None] * total
        for i, r in zip(keep, results):
            full[i] = r
        return full

    run._boxed_call = True  # AOTAutograd passes one list of arguments
    return cm, run


@dataclass
class TrainingPlan:
    """What memplan chose for one captured graph: the partition, both plans and the step peak."""

    partition: str
    forward: object  # CompiledModule
    backward: object
    crossing_bytes: int  # what the backward reads that the forward made (saved activations, output gradients)
    output_bytes: int  # the forward's outputs the caller holds during backward
    backward_step_peak: int  # the backward's planned peak with its inputs live until their last read
    step_peak: int
    budget: int | None
    tried: list = field(default_factory=list)  # (partition, step peak or the reason it failed)

    def __str__(self) -> str:
        from memplan.units import format_bytes as f
        return (f"partition {self.partition}: step peak {f(self.step_peak)} = max(forward {f(self.forward_peak)}, "
                f"backward {f(self.backward_step_peak)}: its own {f(self.backward_peak)}, with saved activations and "
                f"output gradients ({f(self.crossing_bytes)} in all) each until its last read, and outputs held "
                f"{f(self.output_bytes)})" + (f"; budget {f(self.budget)}" if self.budget is not None else ""))

    @property
    def forward_peak(self) -> int:
        return int(self.forward.plan.stats["planned_peak_bytes"])

    @property
    def backward_peak(self) -> int:
        return int(self.backward.plan.stats["planned_peak_bytes"])


def _storage(val):
    from torch.multiprocessing.reductions import StorageWeakRef
    try:
        return StorageWeakRef(val.untyped_storage())
    except Exception:  # noqa: BLE001  (a tensor without storage: counted as its own)
        return None


def _crossing(fw: torch.fx.GraphModule, bw: torch.fx.GraphModule, num_fwd_outputs: int):
    """What the backward reads that the forward computed: per backward input, (its storage, the
    storage's bytes) — (None, 0) for a parameter or input the forward saves, or a view of one: it
    lives anyway; and the bytes of the forward's outputs the caller holds during the backward."""
    fw_inputs = {n.name for n in fw.graph.nodes if n.op == "placeholder"}
    resident = {_storage(n.meta["val"]) for n in fw.graph.nodes
                if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)} - {None}
    made = {n.name: n for n in fw.graph.nodes}
    per_input = []
    for n in bw.graph.nodes:
        if n.op != "placeholder":
            continue
        source = made.get(n.name, n)
        val = source.meta.get("val")
        lives_anyway = n.name in fw_inputs or (isinstance(val, torch.Tensor) and _storage(val) in resident)
        if lives_anyway or not isinstance(val, torch.Tensor):
            per_input.append((None, 0))
            continue
        key = _storage(val)  # views of one storage (q, k and v sliced from one projection) hold it all
        try:
            held = int(val.untyped_storage().nbytes())
        except Exception:  # noqa: BLE001  (no storage to ask: its own bytes)
            held = _tensor_bytes(source)
        per_input.append((key if key is not None else ("own", n.name), max(held, _tensor_bytes(source))))
    out_node = next(n for n in fw.graph.nodes if n.op == "output")
    outs = out_node.args[0]
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    user = sum(_tensor_bytes(o) for o in outs[:num_fwd_outputs]
               if isinstance(o, torch.fx.Node) and o.op != "placeholder"
               and _storage(o.meta.get("val")) not in resident)
    return per_input, user


_UPDATES_INPUTS = {  # functional ops whose results AOTAutograd copies back into inputs: op -> argument positions
    torch.ops.aten._native_batch_norm_legit_functional.default: (3, 4),  # running mean and variance
}


def _updated_inputs(fw: torch.fx.GraphModule) -> set[str]:
    updated = set()
    for node in fw.graph.nodes:
        positions = _UPDATES_INPUTS.get(node.target) if node.op == "call_function" else None
        for i in positions or ():
            arg = node.args[i] if i < len(node.args) else None
            if isinstance(arg, torch.fx.Node) and arg.op == "placeholder":
                updated.add(arg.name)
    return updated


def _named(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _unread_updated_inputs(fw: torch.fx.GraphModule, bw: torch.fx.GraphModule, num_fwd_outputs: int) -> str:
    """Make the backward stop reading forward inputs that the step updates in place after the
    forward (a batch norm's running statistics) where it reads them for nothing. AOTAutograd's
    min-cut partitioner, under an activation_memory_budget, may save such an input to recompute
    from it, and autograd then refuses the backward (the saved tensor's version moved): a batch norm recomputed in
    training mode normalises by the batch's statistics, not the running ones (it becomes
    ``_native_batch_norm_legit.no_stats``), and ``native_batch_norm_backward`` in training mode takes
    None for them. The input is then no longer saved (dropped from the forward's saved outputs and
    the backward's inputs alike). Returns what the backward still reads, named, or ''."""
    import operator

    updated = _updated_inputs(fw)
    hit = {n.name: n for n in bw.graph.nodes if n.op == "placeholder" and n.name in updated}
    if not hit:
        return ""
    functional = torch.ops.aten._native_batch_norm_legit_functional.default
    for node in bw.graph.nodes:  # in training mode its running statistics are not read: None for them
        if node.target is torch.ops.aten.native_batch_norm_backward.default and len(node.args) > 7 \
                and node.args[7] is True:
            node.args = tuple(None if i in (3, 4) else a for i, a in enumerate(node.args))
    for node in list(bw.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is functional and any(isinstance(a, torch.fx.Node) and a.name in hit for a in node.args[3:5]):
            dead = [u for u in node.users if u.target is operator.getitem and u.args[1] >= 3 and not u.users]
            for u in dead:  # the new running statistics, computed again and not read
                bw.graph.erase_node(u)
            if node.args[5] is not True or not all(u.target is operator.getitem and u.args[1] < 3 for u in node.users):
                continue
            with bw.graph.inserting_before(node):
                new = bw.graph.call_function(torch.ops.aten._native_batch_norm_legit.no_stats,
                                             (node.args[0], node.args[1], node.args[2], True, node.args[6], node.args[7]))
            if isinstance(node.meta.get("val"), (tuple, list)):
                new.meta["val"] = tuple(node.meta["val"][:3])
            node.replace_all_uses_with(new)
            bw.graph.erase_node(node)
    still = [name for name, p in hit.items() if p.users]
    if still:
        return _named(still)
    for p in hit.values():
        bw.graph.erase_node(p)
    out_node = next(n for n in fw.graph.nodes if n.op == "output")
    outs = list(out_node.args[0])
    out_node.args = (tuple(outs[:num_fwd_outputs] + [o for o in outs[num_fwd_outputs:]
                                                     if not (isinstance(o, torch.fx.Node) and o.name in hit)]),)
    fw.recompile()
    bw.recompile()
    return ""


def _held(per_input) -> int:
    """Bytes of the distinct storages the backward's inputs hold."""
    return sum(dict(p for p in per_input if p[0] is not None).values())


def _backward_peak(bcm, per_input) -> int:
    """The backward's planned peak with the storages of its inputs that nothing else holds (saved
    activations, output gradients), each live until the last read of any input viewing it (it is
    freed then)."""
    from memplan.analysis.liveness import storage_roots

    graph, check = bcm.graph, bcm.check  # the figures the module was checked with: not computed again
    main = check.main_tier
    row = list(check.outside_profile.get(main, [0])) or [0]
    root = storage_roots(graph)  # an input viewed (a reshape of a saved activation) lives while its views do
    last = {}
    for step, node in enumerate(graph.nodes):
        for v in node.inputs:
            last[root.get(v.name, v.name)] = step
    outputs = {root.get(v.name, v.name) for v in graph.outputs}
    until: dict = {}
    size: dict = {}
    for v, (key, nbytes) in zip(graph.inputs, per_input):
        if key is None:
            continue
        stop = len(row) - 1 if v.name in outputs else last.get(v.name, len(row) - 1)  # never read: never freed
        until[key] = max(until.get(key, -1), stop)
        size[key] = max(size.get(key, 0), nbytes)
    for key, stop in until.items():
        for j in range(min(stop, len(row) - 1) + 1):
            row[j] += size[key]
    return check.storage_bytes.get(main, 0) + max(row)


def _partitions(joint, joint_inputs, num_fwd_outputs, **kwargs):
    """Candidate (name, forward, backward) partitions, saving less as they go."""
    from torch._functorch import config as functorch_config
    from torch._functorch.partitioners import default_partition, min_cut_rematerialization_partition

    for knob in KNOBS:
        if knob is None:
            name = "default"
            fw, bw = default_partition(joint, joint_inputs, num_fwd_outputs=num_fwd_outputs, **kwargs)
        else:
            name = f"min-cut (activation_memory_budget {knob})"
            with functorch_config.patch(activation_memory_budget=knob):
                fw, bw = min_cut_rematerialization_partition(joint, joint_inputs, num_fwd_outputs=num_fwd_outputs,
                                                             **kwargs)
        yield name, fw, bw


class _Planner:
    """The partition function and the two graph compilers handed to AOTAutograd, sharing the plans
    made while partitioning (each graph is planned once)."""

    def __init__(self, compile_kwargs: dict, memory_budget):
        from memplan.units import parse_bytes
        self.kwargs = dict(compile_kwargs)
        self.budget = parse_bytes(memory_budget) if memory_budget is not None else None
        self.kwargs["memory_budget"] = None
        self.plans: list[TrainingPlan] = []
        self.compiled: list = []  # every CompiledModule handed to AOTAutograd, in order
        self._ready: dict[str, tuple] = {}  # graph code -> (cm, runner), planned while partitioning

    def partition(self, joint, joint_inputs, *, num_fwd_outputs, **kwargs):
        tried, best, forward_least = [], None, None
        from memplan.units import format_bytes as f
        for name, fw, bw in _partitions(joint, joint_inputs, num_fwd_outputs, **kwargs):
            drawn = sorted({str(n.target) for n in bw.graph.nodes if n.op == "call_function"
                            and str(n.target).startswith("aten.") and str(n.target).split(".")[1] in RANDOM_PACKETS})
            if drawn:
                tried.append((name, f"its backward draws {drawn[0]} again (a new mask, not the forward's)"))
                continue
            stale = _unread_updated_inputs(fw, bw, num_fwd_outputs)
            if stale:
                tried.append((name, f"its backward reads {stale}, which the forward updates in place "
                                    "(autograd refuses it)"))
                continue
            per_input, user = _crossing(fw, bw, num_fwd_outputs)
            crossing = _held(per_input) + user
            try:
                fcm, frun = _plan_graph(fw, _examples(fw), self.kwargs, self.budget)
            except BudgetInfeasibleError as exc:
                tried.append((name, f"forward alone peaks at {f(exc.best_peak)} at least"))
                forward_least = exc.best_peak if forward_least is None else min(forward_least, exc.best_peak)
                continue
            # the backward's inputs are freed at their last reads, which its own plan does not see:
            # planned without a budget first, then, where the step is over, within what is left
            # with every input held throughout (enough, if it fits)
            bcm, brun = _plan_graph(bw, _examples(bw), self.kwargs, None)
            backward = _backward_peak(bcm, per_input) + user
            if self.budget is not None and backward > self.budget and self.budget > crossing:
                try:
                    tight = _plan_graph(bw, _examples(bw), self.kwargs, self.budget - crossing)
                    tight_peak = _backward_peak(tight[0], per_input) + user
                    if tight_peak < backward:
                        (bcm, brun), backward = tight, tight_peak
                except BudgetInfeasibleError:
                    pass
            peak = max(int(fcm.plan.stats["planned_peak_bytes"]), backward)
            tried.append((name, peak))
            plan = TrainingPlan(name, fcm, bcm, _held(per_input), user, backward, peak, self.budget, tried)
            if best is None or peak < best.step_peak:
                best = plan
            if self.budget is None or peak <= self.budget:
                self.plans.append(plan)
                self._ready[fw.code] = (fcm, frun)
                self._ready[bw.code] = (bcm, brun)
                return fw, bw
        lines = "; ".join(f"{n}: {p if isinstance(p, str) else f(p)}" for n, p in tried)
        if best is not None:
            smallest = best.step_peak
            found = f"the smallest step peak found is {f(smallest)}"
        else:
            smallest = forward_least or 0
            found = f"every partition's forward alone peaks at {f(smallest)} or more"
        raise BudgetInfeasibleError(
            f"no partition of the training step fits the budget {f(self.budget)} ({self.budget:,} B): "
            f"{found} ({lines})",
            budget=self.budget, best_peak=smallest, lower_bound=0, live_at_peak=[])

    def compile_graph(self, gm, example_inputs):
        ready = self._ready.pop(gm.code, None)
        if ready is None:
            ready = _plan_graph(gm, example_inputs, self.kwargs, self.budget)
        self.compiled.append(ready[0])
        return ready[1]


def _examples(gm: torch.fx.GraphModule) -> list:
    return [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]


def backend(target="cpu", memory_budget=None, *, options: dict | None = None, backend: str = "pytorch"):
    """A ``torch.compile`` backend that runs forward (and, when training, backward) graphs as
    memplan-planned code. ``memory_budget`` bounds each training step's planned peak (see the
    module's docstring). Attributes of the returned callable: ``compiled`` (the
    :class:`~memplan.api.CompiledModule` of every graph compiled) and ``plans`` (a
    :class:`TrainingPlan` per graph captured for training).

    >>> import torch, memplan
    >>> model = torch.nn.Linear(4, 2)
    >>> cm = torch.compile(model, backend=memplan.backend())
    >>> cm(torch.randn(3, 4)).sum().backward()
    """
    return _make_backend(target, memory_budget, options, backend)


def _make_backend(target, memory_budget, options, backend_name):
    from torch._dynamo.backends.common import aot_autograd

    planner = _Planner({"target": target, "options": options, "backend": backend_name}, memory_budget)
    fn = aot_autograd(fw_compiler=planner.compile_graph, bw_compiler=planner.compile_graph,
                      inference_compiler=planner.compile_graph, partition_fn=planner.partition)

    def memplan_backend(gm, example_inputs):
        return fn(gm, example_inputs)

    memplan_backend.compiled = planner.compiled
    memplan_backend.plans = planner.plans
    return memplan_backend


_ENTRIES = itertools.count()


def _entry(model):
    """A function calling ``model`` whose code object is its own: Dynamo caches compiled graphs per
    code object (every ``nn.Sequential`` shares one ``forward``), and past 8 entries of one it runs
    eagerly (or, with ``fullgraph``, fails) — so each TrainModule gets a code object of its own."""
    def step(*args, **kwargs):
        return model(*args, **kwargs)

    code = step.__code__.replace(co_name=f"memplan_train_step_{next(_ENTRIES)}")
    return types.FunctionType(code, step.__globals__, code.co_name, step.__defaults__, step.__closure__)


class TrainModule(torch.nn.Module):
    """A model whose forward and backward run memplan-planned code (``memplan.compile(...,
    mode="train")``). Its parameters are the model's: an optimizer over either updates both.
    Graphs are captured and planned at the first call (and again for inputs of a new shape)."""

    def __init__(self, model: torch.nn.Module, be, budget=None):
        super().__init__()
        self.model = model
        self._backend = be
        # under a budget the step must be one graph: a graph break, a module Dynamo runs eagerly or a
        # recompile past Dynamo's limit would run code outside the plan and its budget
        self._fullgraph = budget is not None
        self._compiled = torch.compile(_entry(model), backend=be, dynamic=False, fullgraph=self._fullgraph)

    @property
    def plans(self) -> list[TrainingPlan]:
        return self._backend.plans

    @property
    def compiled(self) -> list:
        return self._backend.compiled

    def forward(self, *args, **kwargs):
        try:
            return self._compiled(*args, **kwargs)
        except Exception as exc:  # Dynamo wraps a backend's error; the user sees memplan's
            inner = exc
            while inner is not None and not isinstance(inner, MemplanError):
                inner = getattr(inner, "inner_exception", None) or inner.__cause__
            if isinstance(inner, MemplanError):
                raise inner.with_traceback(None) from None
            if self._fullgraph and isinstance(exc, torch._dynamo.exc.TorchDynamoException):
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise MemplanError(f"mode='train' with a memory budget needs the step captured as one graph, and "
                                   f"torch.compile could not ({type(exc).__name__}: {first})") from None
            raise


def compile_train(model, example_inputs=None, target="cpu", memory_budget=None, *, options=None,
                  backend="pytorch") -> TrainModule:
    """``memplan.compile(..., mode="train")``: a :class:`TrainModule` of ``model``. Its graphs are
    captured and planned at its first call, as ``torch.compile``'s are (a budget that no partition
    meets raises there, before anything runs); ``example_inputs``, where given, are checked to be
    tensors."""
    if not isinstance(model, torch.nn.Module):
        raise MemplanError(f"mode='train' takes an nn.Module, got {type(model).__name__}")
    if example_inputs is not None and not all(isinstance(a, torch.Tensor) for a in example_inputs):
        raise MemplanError("mode='train': example_inputs must be tensors")
    return TrainModule(model, _make_backend(target, memory_budget, options, backend), memory_budget)
