"""Property tests: random conv / residual / view models with in-place candidates and fused epilogues.

Random ``nn.Module``s built from a drawn recipe (a small DAG over ``[1, C, 6, 6]``
tensors: convolutions 1x1 / 3x3 / depthwise, residual adds ``conv(h) + h`` and
``h + conv(h)``, relu, sigmoid, add, mul, views there and back, slices, cat, clone,
several outputs including intermediates read later, an input or a view of it
returned) are compiled with memplan and checked against eager:

- every output equals eager's;
- the call does not modify its inputs, and a second call gives the same result
  (no weight was overwritten);
- an output shares storage with an input or a parameter only where eager's does,
  and two outputs share storage only where eager's do;
- the planned IR never has a node read, through any alias or overlapping slot, the bytes
  it overwrites (other than through the argument it is allowed to write over);
- ``verify_plan`` accepts every planned graph the pipeline makes (with the planned peak the
  report states) and rejects each fault injected into a copy of it, and hand-made planned
  graphs that overwrite what a node still reads.
"""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import memplan
from memplan.api import lower
from memplan.errors import PlanVerificationError
from memplan.ir import Graph, TensorType
from memplan.backends.pytorch_ops import MKLDNN_CONV2D_ADD
from memplan.ir.ops import lookup
from memplan.ir.graph import KERNEL, SLOT, Alloc, Value
from memplan.ir.ops import OpKind, is_view, lookup
from memplan.passes.mkldnn_conv import available as mkldnn_available
from memplan.passes.verify_plan import verify_plan

H = W = 6
OPTION_SETS = [{"measure_scratch": False}, {"measure_scratch": False, "conv_kernel": "aten"},
               {"measure_scratch": False, "allocation": "storage"}]  # slots to check (auto often frees)
OPTION_IDS = ["default", "aten", "storage"]
UNARY = ("relu", "sigmoid", "neg", "tanh")
BINARY = ("add", "mul", "sub")
VIEWS = ("flatten", "reshape", "view", "transpose", "permute")


# ---------------------------------------------------------------- recipes and models
@st.composite
def recipes(draw):
    """``(C, n_inputs, steps, outputs)``; each step appends one value to the value list."""
    c = draw(st.integers(2, 6))
    n_inputs = draw(st.integers(1, 2))
    steps = []
    n = n_inputs
    for _ in range(draw(st.integers(1, 6))):
        pick = st.one_of(st.just(n - 1), st.integers(0, n - 1))  # mostly the latest value: chains
        kind = draw(st.sampled_from(["conv", "res", "res", "res2", "unary", "binary", "view", "slice_cat",
                                     "cat_conv", "clone", "slice_scatter"]))
        if kind == "conv":
            steps.append(("conv", draw(pick), draw(st.sampled_from([1, 3])), draw(st.booleans()),
                          draw(st.booleans())))
        elif kind == "res":  # conv(h) + h or h + conv(h), maybe relu after
            steps.append(("res", draw(pick), draw(st.sampled_from([1, 3, 3])), draw(st.booleans()),
                          draw(st.booleans()), draw(st.booleans())))
        elif kind == "res2":  # conv(a) + b
            steps.append(("res2", draw(pick), draw(pick), draw(st.sampled_from([1, 3])), draw(st.booleans()),
                          draw(st.booleans()), draw(st.booleans())))
        elif kind == "unary":
            steps.append(("unary", draw(pick), draw(st.sampled_from(UNARY))))
        elif kind == "binary":
            steps.append(("binary", draw(pick), draw(pick), draw(st.sampled_from(BINARY))))
        elif kind == "view":
            steps.append(("view", draw(pick), draw(st.sampled_from(VIEWS)), draw(st.sampled_from(UNARY + ("none",)))))
        elif kind == "slice_cat":
            dim = draw(st.sampled_from([1, 2, 3]))
            size = c if dim == 1 else H
            steps.append(("slice_cat", draw(pick), draw(pick), dim, draw(st.integers(1, size - 1))))
        elif kind == "cat_conv":
            steps.append(("cat_conv", draw(pick), draw(pick), draw(st.sampled_from([1, 3]))))
        elif kind == "clone":
            steps.append(("clone", draw(pick)))
        else:
            steps.append(("slice_scatter", draw(pick), draw(pick)))
        n += 1
    outputs = [("value", n - 1)]
    for _ in range(draw(st.integers(0, 2))):
        outputs.append(("value", draw(st.integers(n_inputs, n - 1))))
    if draw(st.integers(0, 4)) == 0:
        outputs.append(("input", draw(st.integers(0, n_inputs - 1)), draw(st.sampled_from(["same", "flatten"]))))
    return c, n_inputs, tuple(steps), tuple(outputs)


def _unary(name, t):
    return {"relu": torch.relu, "sigmoid": torch.sigmoid, "neg": torch.neg, "tanh": torch.tanh,
            "none": lambda z: z}[name](t)


class RecipeModel(nn.Module):
    """Interprets a recipe (see :func:`recipes`)."""

    def __init__(self, recipe):
        super().__init__()
        self.c, self.n_inputs, self.steps, self.outs = recipe
        c = self.c
        self.convs = nn.ModuleList()
        for step in self.steps:
            if step[0] in ("conv", "res", "res2"):
                k, dw = (step[2], step[3]) if step[0] != "res2" else (step[3], step[4])
                self.convs.append(nn.Conv2d(c, c, k, padding=k // 2, groups=c if dw else 1))
            elif step[0] == "cat_conv":
                self.convs.append(nn.Conv2d(2 * c, c, step[3], padding=step[3] // 2))
        for conv in self.convs:  # unit-scale activations: random init would shrink them
            fan_in = conv.weight[0].numel()
            nn.init.normal_(conv.weight, 0.0, 1.0 / fan_in ** 0.5)
            nn.init.uniform_(conv.bias, -0.5, 0.5)

    def forward(self, *xs):
        vals = list(xs)
        convs = iter(self.convs)
        c = self.c
        for step in self.steps:
            kind = step[0]
            if kind == "conv":
                _, a, _k, _dw, relu = step
                y = next(convs)(vals[a])
                y = torch.relu(y) if relu else y
            elif kind == "res":
                _, a, _k, _dw, left, relu = step
                h = vals[a]
                y = next(convs)(h) + h if left else h + next(convs)(h)
                y = torch.relu(y) if relu else y
            elif kind == "res2":
                _, a, b, _k, _dw, left, relu = step
                y = next(convs)(vals[a]) + vals[b] if left else vals[b] + next(convs)(vals[a])
                y = torch.relu(y) if relu else y
            elif kind == "unary":
                y = _unary(step[2], vals[step[1]])
            elif kind == "binary":
                _, a, b, op = step
                y = {"add": torch.add, "mul": torch.mul, "sub": torch.sub}[op](vals[a], vals[b])
            elif kind == "view":
                _, a, how, f = step
                t = vals[a]
                if how == "flatten":
                    y = _unary(f, t.flatten(2)).view(1, c, H, W)
                elif how == "reshape":
                    y = _unary(f, t.reshape(1, c * H, W)).reshape(1, c, H, W)
                elif how == "view":
                    y = _unary(f, t.view(c, H * W)).view(1, c, H, W)
                elif how == "transpose":
                    y = _unary(f, t.transpose(2, 3)).transpose(2, 3)
                else:
                    y = _unary(f, t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            elif kind == "slice_cat":
                _, a, b, dim, k = step
                size = vals[a].shape[dim]
                y = torch.cat([vals[a].narrow(dim, 0, k), vals[b].narrow(dim, k, size - k)], dim)
            elif kind == "cat_conv":
                _, a, b, _k = step
                y = next(convs)(torch.cat([vals[a], vals[b]], 1))
            elif kind == "clone":
                y = vals[step[1]].clone()
            else:  # slice_scatter
                _, a, b = step
                y = torch.slice_scatter(vals[a] * 1.5, vals[b][:, :, 1:3] * 2, dim=2, start=1, end=3)
            vals.append(y)
        outs = []
        for o in self.outs:
            if o[0] == "value":
                outs.append(vals[o[1]])
            else:
                outs.append(xs[o[1]] if o[2] == "same" else xs[o[1]].flatten(1))
        return outs[0] if len(outs) == 1 else tuple(outs)


def describe(recipe) -> str:
    """The recipe as the Python of its forward (for failure messages)."""
    c, n_inputs, steps, outs = recipe
    names = [f"x{i}" for i in range(n_inputs)]
    lines = [f"# C={c}, inputs {', '.join(f'{n}: [1, {c}, 6, 6]' for n in names)}"]
    for i, step in enumerate(steps):
        v = f"v{i}"
        kind = step[0]
        if kind == "conv":
            _, a, k, dw, relu = step
            e = f"conv{k}x{k}{'_dw' if dw else ''}({names[a]})"
            e = f"relu({e})" if relu else e
        elif kind == "res":
            _, a, k, dw, left, relu = step
            conv = f"conv{k}x{k}{'_dw' if dw else ''}({names[a]})"
            e = f"{conv} + {names[a]}" if left else f"{names[a]} + {conv}"
            e = f"relu({e})" if relu else e
        elif kind == "res2":
            _, a, b, k, dw, left, relu = step
            conv = f"conv{k}x{k}{'_dw' if dw else ''}({names[a]})"
            e = f"{conv} + {names[b]}" if left else f"{names[b]} + {conv}"
            e = f"relu({e})" if relu else e
        elif kind == "unary":
            e = f"{step[2]}({names[step[1]]})"
        elif kind == "binary":
            e = f"{names[step[1]]} {dict(add='+', mul='*', sub='-')[step[3]]} {names[step[2]]}"
        elif kind == "view":
            e = f"{step[3]}({names[step[1]]}.{step[2]}(...)).<back>"
        elif kind == "slice_cat":
            _, a, b, dim, k = step
            e = f"cat([{names[a]}.narrow({dim}, 0, {k}), {names[b]}.narrow({dim}, {k}, ...)], {dim})"
        elif kind == "cat_conv":
            e = f"conv{step[3]}x{step[3]}(cat([{names[step[1]]}, {names[step[2]]}], 1))"
        elif kind == "clone":
            e = f"{names[step[1]]}.clone()"
        else:
            e = f"slice_scatter({names[step[1]]} * 1.5, {names[step[2]]}[:, :, 1:3] * 2, dim=2, start=1, end=3)"
        lines.append(f"{v} = {e}")
        names.append(v)
    rets = []
    for o in outs:
        if o[0] == "value":
            rets.append(names[o[1]])
        else:
            rets.append(f"x{o[1]}" if o[2] == "same" else f"x{o[1]}.flatten(1)")
    lines.append(f"return {', '.join(rets)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- checks
def _as_list(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def check_against_eager(model: nn.Module, inputs: list[torch.Tensor], cm, what: str = "") -> None:
    """Outputs equal eager's; inputs untouched; no aliasing of inputs, weights or outputs that
    eager does not have; a second call gives the same result."""
    with torch.no_grad():
        expected = _as_list(model(*inputs))
    eager_in = [[_storage(e) == _storage(x) for x in inputs] for e in expected]
    eager_pairs = {(i, j) for i, a in enumerate(expected) for j, b in enumerate(expected)
                   if i < j and _storage(a) == _storage(b)}
    before = [x.clone() for x in inputs]
    weights_before = {k: p.detach().clone() for k, p in model.state_dict().items()}
    got = _as_list(cm(*inputs))
    assert len(got) == len(expected), what
    for x, b in zip(inputs, before):
        assert torch.equal(x, b), f"{what}: the call modified an input"
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape and g.dtype == e.dtype, f"{what}: output {i}: {g.shape} vs eager {e.shape}"
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4, msg=lambda m: f"{what}: output {i}: {m}")
    weight_storages = {_storage(p) for p in model.state_dict().values()}
    weight_storages |= {_storage(w) for w in cm.graph.weights.values() if isinstance(w, torch.Tensor)}
    for i, g in enumerate(got):
        for j, x in enumerate(inputs):
            if _storage(g) == _storage(x):
                assert eager_in[i][j], f"{what}: output {i} shares storage with input {j}; eager's does not"
        assert _storage(g) not in weight_storages, f"{what}: output {i} shares storage with a parameter"
    for i, a in enumerate(got):
        for j, b in enumerate(got):
            if i < j and _storage(a) == _storage(b) and a.numel() and b.numel():
                assert (i, j) in eager_pairs, f"{what}: outputs {i} and {j} share storage; eager's do not"
    again = _as_list(cm(*inputs))
    for i, (g, e) in enumerate(zip(again, expected)):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4, msg=lambda m: f"{what}: second call, output {i}: {m}")
    for k, p in model.state_dict().items():
        assert torch.equal(p, weights_before[k]), f"{what}: the call modified weight {k}"


def _positional_values(node):
    """``(position, value)`` for each tensor the node reads: args by index (a list argument's items
    share its index), kwargs as position None."""
    for i, a in enumerate(node.args):
        if isinstance(a, Value):
            yield i, a
        elif isinstance(a, (list, tuple)):
            for item in a:
                if isinstance(item, Value):
                    yield i, item
    for a in node.kwargs.values():
        if isinstance(a, Value):
            yield None, a
        elif isinstance(a, (list, tuple)):
            for item in a:
                if isinstance(item, Value):
                    yield None, item


def assert_never_reads_what_it_overwrites(graph: Graph) -> None:
    """No node of planned ``graph`` reads (through any view, in-place alias or overlapping slot of a
    storage) the bytes it writes, other than the one argument it may write over: the exact value
    ``reuses`` names, at any position for an elementwise op, at the positions its ``OpDef.inplace_args`` lists
    for others."""
    root = {v.name: v.name for v in graph.values()}
    for n in graph.nodes:  # storage roots, derived here independently of memplan's passes
        if n.reuses is not None:
            root[n.outputs[0].name] = root[n.reuses.name]
        elif is_view(n.op) and n.inputs:
            for v in n.outputs:
                root[v.name] = root[n.inputs[0].name]
    slot = {}
    for v in graph.values():
        if v.alloc is not None and v.alloc.kind == SLOT:
            slot[v.name] = (v.alloc.storage, v.alloc.offset, v.alloc.offset + int(v.type.nbytes))

    def overlap(r1, r2):
        if r1 == r2:
            return True
        if r1 in slot and r2 in slot:
            t1, lo1, hi1 = slot[r1]
            t2, lo2, hi2 = slot[r2]
            return t1 == t2 and lo1 < hi2 and lo2 < hi1 and hi1 > lo1 and hi2 > lo2
        return False

    for step, node in enumerate(graph.nodes):  # the node order is the schedule
        name = node.name
        if node.reuses is not None:
            written = [root[node.reuses.name]]
            if lookup(node.op).inplace_args:
                allowed = set(lookup(node.op).inplace_args)
            elif lookup(node.op).kind in (OpKind.ELEMENTWISE, OpKind.BROADCAST):
                allowed = {i for i, _ in _positional_values(node)}
            else:
                allowed = set()
        elif is_view(node.op):
            continue
        else:
            written = [v.name for v in node.outputs if root[v.name] == v.name]
            allowed = set()
        for pos, v in _positional_values(node):
            if pos in allowed and v is node.reuses:
                continue
            for w in written:
                assert not overlap(root[v.name], w), (
                    f"step {step}: node {name} ({node.op}) writes the bytes of %{w} while reading %{v.name} "
                    f"(argument {pos}, storage %{root[v.name]}), which it may not overwrite\n{graph}")


# ---------------------------------------------------------------- property tests
def _inputs(recipe, seed):
    c, n_inputs, _, _ = recipe
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, c, H, W, generator=gen) for _ in range(n_inputs)]


def _model(recipe, seed):
    torch.manual_seed(seed)
    return RecipeModel(recipe).eval()


def _compile_each(model, example):
    """memplan under each option set; the model is captured once (capture dominates the time)."""
    graph = lower(model, tuple(example))
    for i, options in enumerate(OPTION_SETS):
        g = graph if i == len(OPTION_SETS) - 1 else copy.deepcopy(graph)
        yield options, memplan.compile(g, options=options)


def injected_faults(graph: Graph):
    """``(fault, match, broken)``: copies of planned ``graph``, each with one fault injected where the
    graph has what it takes: a reader moved before its producer, a read of a value after an
    in-place node overwrote it, a value that owns bytes left without an allocation, two values live
    at once put in the same slot, a graph output put in the storage, a budget below the peak."""
    check = verify_plan(graph)
    nodes = graph.nodes
    reader = next((i for i, n in enumerate(nodes) if any(v.producer is not None for v in n.inputs)), None)
    if reader is not None:
        g = copy.deepcopy(graph)
        node = g.nodes[reader]
        producer = min(g.nodes.index(v.producer) for v in node.inputs if v.producer is not None)
        order = [n for n in g.nodes if n is not node]
        g.reorder(order[:producer] + [node] + order[producer:])
        yield "reader before producer", "before it is produced", g
    inplace = next((i for i, n in enumerate(nodes) if n.reuses is not None), None)
    if inplace is not None:
        g = copy.deepcopy(graph)
        reused = g.nodes[inplace].reuses
        (late,) = g.add_node("aten.neg.default", (reused,), {}, [reused.type])  # read after the overwrite
        late.alloc = Alloc(KERNEL) if check.planned else None
        yield "read after in-place", "overwrote its storage in place", g
    owners = [v.name for n in nodes for v in n.outputs if v.alloc is not None]
    if len(owners) > 1 or (owners and graph.storages):  # (with no allocation left, the graph is unplanned:
        owner = owners[-1]                              # checked as the free-at-last-use run, and sound)
        g = copy.deepcopy(graph)
        g.value(owner).alloc = None
        yield "no allocation", "has no allocation", g
    slots = [v.name for n in nodes for v in n.outputs if v.alloc is not None and v.alloc.kind == SLOT]
    ranges = check.live_ranges
    size = {name: int(graph.value(name).nbytes) for name in slots}
    pair = next(((a, b) for a in slots for b in slots if a != b and 0 < size[b] <= size[a]
                 and ranges[a][0] <= ranges[b][0] <= ranges[a][1]), None)
    if pair is not None:
        g = copy.deepcopy(graph)
        a, b = (g.value(name) for name in pair)
        b.alloc = Alloc(SLOT, a.alloc.storage, a.alloc.offset, b.alloc.strides)
        yield "overlapping slots", "overlaps", g
    if graph.storages:
        out = next((v.name for v in graph.outputs if v.alloc is not None and v.alloc.kind != SLOT), None)
        if out is not None:
            g = copy.deepcopy(graph)
            v = g.value(out)
            v.alloc = Alloc(SLOT, next(iter(g.storages)), 0, v.alloc.strides)
            yield "output in the storage", "lives in storage", g
    if check.planned_peak_bytes > 0:
        g = copy.deepcopy(graph)
        g.attrs["memory_budget"] = check.planned_peak_bytes - 1
        yield "budget below the peak", "exceeds the memory budget", g


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes(), st.integers(0, 2 ** 16))
def test_random_models_match_eager(recipe, seed):
    """Per compiled graph: ``verify_plan`` passes (and finds the planned peak the report states),
    rejects each fault injected into a copy, no node reads the bytes it overwrites, and the outputs
    match eager's with no aliasing eager does not have."""
    model = _model(recipe, seed)
    for options, cm in _compile_each(model, _inputs(recipe, seed)):
        what = f"options={options}\n{describe(recipe)}\n"
        check = verify_plan(cm.graph, cm.target)
        assert check.planned_peak_bytes == cm.plan.stats["planned_peak_bytes"], what
        for fault, match, broken in injected_faults(cm.graph):
            with pytest.raises(PlanVerificationError, match=match):
                verify_plan(broken, cm.target)
                pytest.fail(f"{what}verify_plan accepts {fault}:\n{broken}")
        assert_never_reads_what_it_overwrites(cm.graph)
        check_against_eager(model, _inputs(recipe, seed + 1), cm, what)


# ---------------------------------------------------------------- the known classes, one by one
class Residual(nn.Module):
    """``h = conv1(x); y = conv2(h) + h`` (or ``h + conv2(h)``), maybe relu after."""

    def __init__(self, c=4, k=3, depthwise=False, left=True, relu=False):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 1)
        self.conv2 = nn.Conv2d(c, c, k, padding=k // 2, groups=c if depthwise else 1)
        self.left, self.relu = left, relu
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, 0.0, 1.0 / conv.weight[0].numel() ** 0.5)
            nn.init.uniform_(conv.bias, -0.5, 0.5)

    def forward(self, x):
        h = self.conv1(x)
        y = self.conv2(h) + h if self.left else h + self.conv2(h)
        return torch.relu(y) if self.relu else y


RESIDUALS = {
    "conv3x3(h)+h": dict(k=3),
    "h+conv3x3(h)": dict(k=3, left=False),
    "depthwise3x3(h)+h": dict(k=3, depthwise=True),
    "relu(conv3x3(h)+h)": dict(k=3, relu=True),
    "conv1x1(h)+h": dict(k=1),
}


@pytest.mark.parametrize("options", OPTION_SETS, ids=OPTION_IDS)
@pytest.mark.parametrize("name", list(RESIDUALS))
def test_residual_conv_add_matches_eager(name, options):
    model = Residual(**RESIDUALS[name]).eval()
    cm = memplan.compile(model, (torch.randn(1, 4, H, W),), options=options)
    check_against_eager(model, [torch.randn(1, 4, H, W)], cm, f"{name} {options}")
    verify_plan(cm.graph, cm.target)
    assert_never_reads_what_it_overwrites(cm.graph)


class TwoResiduals(nn.Module):
    """``a = conv1(x); b = conv3(x); conv2(a) + b``: the add may write over ``b`` (not ``a``)."""

    def __init__(self, c=4):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.conv3 = nn.Conv2d(c, c, 1)

    def forward(self, x):
        a, b = self.conv1(x), self.conv3(x)
        return torch.relu(self.conv2(a) + b)


def _conv_add_node(cm):
    nodes = [n for n in cm.graph.nodes if n.op == MKLDNN_CONV2D_ADD]
    assert len(nodes) == 1, cm.ir
    return nodes[0]


@pytest.mark.skipif(not mkldnn_available(), reason="needs oneDNN")
def test_verify_plan_rejects_conv_add_overwriting_its_own_input():
    """Hand-made fault: the fused conv+add writes over the convolution's input ``a`` (position 0)."""
    cm = memplan.compile(TwoResiduals().eval(), (torch.randn(1, 4, H, W),), options={"measure_scratch": False})
    node = _conv_add_node(cm)
    verify_plan(cm.graph)  # as planned: sound
    a = node.args[0]
    assert a is not node.args[7] and node.reuses is node.args[7]
    node.reuses = a
    with pytest.raises(PlanVerificationError, match="in place"):
        verify_plan(cm.graph)


@pytest.mark.skipif(not mkldnn_available(), reason="needs oneDNN")
def test_verify_plan_rejects_conv_add_reading_the_residual_it_overwrites():
    """``conv2(h) + h`` fused with ``reuses(h)``: the convolution reads ``h`` while the sum is written
    into ``h``. Whatever plan memplan makes for it, a plan with that node must be rejected."""
    cm = memplan.compile(Residual(k=3).eval(), (torch.randn(1, 4, H, W),), options={"measure_scratch": False})
    fused = [n for n in cm.graph.nodes if n.op == MKLDNN_CONV2D_ADD]
    if not fused:
        pytest.skip("memplan no longer fuses conv2(h) + h (fine); nothing to tamper with")
    node = fused[0]
    h = node.args[7]
    node.args = (h, *node.args[1:])  # the convolution reads the residual it overwrites
    node.reuses = h
    for v in node.outputs:
        v.alloc = None  # an in-place result owns no bytes: only the overwrite is at fault
    with pytest.raises(PlanVerificationError, match="in place while reading"):
        verify_plan(cm.graph)


def test_verify_plan_rejects_elementwise_reading_another_alias_it_overwrites():
    """Hand-built: ``b = a + a.t()`` written over ``a``."""
    g = Graph("alias")
    f = TensorType("f32", (4, 4))
    x = g.add_input("x", f)
    (a,) = g.add_node("aten.relu.default", (x,), {}, [f])
    (t,) = g.add_node("aten.t.default", (a,), {}, [f])
    (b,) = g.add_node("aten.add.Tensor", (a, t), {}, [f])
    (y,) = g.add_node("aten.neg.default", (b,), {}, [f])
    g.outputs = [y]
    verify_plan(g)  # unplanned: checked as the free-at-last-use run
    g.nodes[2].reuses = a
    with pytest.raises(PlanVerificationError, match=r"overwrites %relu in place while reading %t"):
        verify_plan(g)


def test_verify_plan_rejects_reading_a_value_after_it_was_overwritten():
    """Hand-built: ``b = relu(a)`` written over ``a``, then ``a`` read again."""
    g = Graph("late")
    f = TensorType("f32", (4,))
    x = g.add_input("x", f)
    (a,) = g.add_node("aten.neg.default", (x,), {}, [f])
    (b,) = g.add_node("aten.relu.default", (a,), {}, [f])
    (y,) = g.add_node("aten.add.Tensor", (b, a), {}, [f])
    g.outputs = [y]
    verify_plan(g)
    g.nodes[1].reuses = a
    with pytest.raises(PlanVerificationError, match=r"reads %neg after node relu overwrote its storage"):
        verify_plan(g)
