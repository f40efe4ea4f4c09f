"""Strides eager PyTorch gives each value, found by running the graph on fake tensors.

The IR types carry shapes, not strides, but later view ops in a captured
graph rely on the strides eager produced (``permute`` then ``view`` only works
on the layout the exporter saw). A planned slot must therefore have those
strides. ``FakeTensorMode`` reproduces the CPU kernels' output strides without
computing anything (meta kernels alone do not: fused attention differs).
Running a large graph so takes a while (DenseNet-121: about 0.3 s), and many
passes ask, so the result is cached per graph version
(:func:`stride_fingerprint`).

Rewrites that insert layout copies use :func:`layout_copy` and
:func:`copy_to_layout`, which place the nodes in the graph through its rewrite
API and return them.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from memplan.ir.graph import Graph, Node, Value, map_values
from memplan.ir.custom_ops import MKLDNN_CONVS
from memplan.ir.ops import flatten_outputs, lookup
from memplan.ir.types import TensorType, is_dense  # noqa: F401  (is_dense: re-exported)


PLAIN_VIEWS = {"aten.view.default", "aten._unsafe_view.default"}

CACHE_SIZE = 8  # graph versions whose strides are kept (a compile needs one or two at a time)
_CACHE: OrderedDict[tuple, dict[str, tuple[int, ...]]] = OrderedDict()
_RUNS = 0  # fake runs made in this process (see fake_runs)


def eager_strides(graph: Graph) -> dict[str, tuple[int, ...]]:
    """value name -> strides of that value when the graph runs eagerly on the CPU.

    A pure analysis: ``graph`` is not changed. The graph runs on fake tensors once per graph
    version: the result is cached under :func:`stride_fingerprint`, which changes with anything
    the run reads, so a graph no pass changed (or only reordered, or only marked in place) is not
    run again, and any rewrite that could change a stride runs it anew. The caller owns the
    returned dict.
    """
    key = stride_fingerprint(graph)
    if key is not None:
        try:
            _CACHE.move_to_end(key)
            return dict(_CACHE[key])
        except KeyError:  # not cached (or just evicted by another thread)
            pass
    with FakeRun(graph) as run:
        for node in graph.nodes:
            run.run(node)
    strides = run.strides()
    _remember(key, strides)
    return dict(strides)


def cache_strides(graph: Graph, strides: dict[str, tuple[int, ...]]) -> None:
    """Record ``strides`` as what :func:`eager_strides` gives ``graph`` as it is now: for a rewrite
    that ran its result on fake tensors itself (one :class:`FakeRun` over its nodes in order)."""
    _remember(stride_fingerprint(graph), strides)


def clear_stride_cache() -> None:
    _CACHE.clear()


def fake_runs() -> int:
    """How many times graphs ran on fake tensors in this process (a counter for tests and
    benchmarks: a cache hit of :func:`eager_strides` does not count)."""
    return _RUNS


def _remember(key, strides) -> None:
    if key is None:
        return
    _CACHE[key] = dict(strides)
    _CACHE.move_to_end(key)
    while len(_CACHE) > CACHE_SIZE:
        try:
            _CACHE.popitem(last=False)
        except KeyError:  # emptied meanwhile by another thread
            break


class FakeRun:
    """Runs nodes of ``graph`` one at a time on fake tensors, as eager would run them::

        with FakeRun(graph) as run:
            for node in graph.nodes:
                run.run(node)
        strides = run.strides()

    :func:`eager_strides` runs every node in order; a rewrite may run nodes it inserts as it goes.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self.env: dict[str, torch.Tensor] = {}
        self._mode: FakeTensorMode | None = None

    def __enter__(self) -> "FakeRun":
        global _RUNS
        _RUNS += 1
        self._mode = FakeTensorMode(allow_non_fake_inputs=False)
        mode = self._mode.__enter__()
        try:
            for v in self.graph.inputs:
                self.env[v.name] = torch.empty(tuple(int(d) for d in v.type.shape), dtype=v.type.torch_dtype)
            for v in self.graph.params:
                data = self.graph.weights.get(v.name)
                self.env[v.name] = (mode.from_tensor(data) if data is not None else
                                    torch.empty(tuple(int(d) for d in v.type.shape), dtype=v.type.torch_dtype))
        except BaseException as e:
            self._mode.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    def run(self, node: Node) -> None:
        """Run ``node`` on the fake values of its inputs (every one must have run already)."""
        env = self.env
        if node.subgraph is not None:  # a region writes its results into dense buffers it is given
            for v in node.outputs:
                env[v.name] = torch.empty(tuple(int(d) for d in v.type.shape), dtype=v.type.torch_dtype)
            return
        args = map_values(node.args, lambda v: env[v.name])
        kwargs = map_values(node.kwargs, lambda v: env[v.name])
        opdef = lookup(node.op, node=node.name)
        results = flatten_outputs(opdef.impl(*args, **kwargs))
        if opdef.view:
            results = _real_view_strides(opdef, node, args, kwargs, results)
        for v, t in zip(node.outputs, results):
            env[v.name] = t

    def strides(self) -> dict[str, tuple[int, ...]]:
        """value name -> strides, for every value run so far (inputs and params included)."""
        return {name: tuple(t.stride()) for name, t in self.env.items()}


def _real_view_strides(opdef, node: Node, args, kwargs, results) -> list:
    """The results of a view op with the strides the real kernel gives them. Fake tensors compute a
    view's strides in Python and differ from the real kernel on size-1 dims (``permute`` then
    ``view``: a batch stride of 65536 where the CPU gives 64), and some kernels (upsampling) take
    another path on either: so the view runs again on meta tensors of the same sizes and strides."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.utils._pytree import tree_map

    def meta(x):
        if isinstance(x, torch.Tensor):
            return torch.empty_strided(tuple(x.shape), tuple(x.stride()), dtype=x.dtype, device="meta")
        return x
    try:
        with unset_fake_temporarily():
            real = flatten_outputs(opdef.impl(*tree_map(meta, list(args)), **tree_map(meta, dict(kwargs))))
    except (RuntimeError, ValueError, TypeError):
        return results
    return [t if tuple(t.stride()) == tuple(r.stride()) or tuple(t.shape) != tuple(r.shape)
            else torch.empty_strided(tuple(r.shape), tuple(r.stride()), dtype=t.dtype)
            for t, r in zip(results, real)]


# ---- the cache key -----------------------------------------------------------
class _Same:
    """A leaf compared by identity (an object of no known value type); holding it keeps its id
    from being reused while a cache key names it."""
    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


_PLAIN = (int, str, type(None))  # compared by value, as themselves
_TYPED = (float, bool, complex, torch.dtype, torch.memory_format, torch.layout, torch.device)  # with their type


def _leaf(x, used: list):
    if isinstance(x, Value):
        used.append(x.name)
        return ("%", x.name)
    t = type(x)
    if t in _PLAIN:
        return x
    if t in _TYPED:
        return (t, x)  # 1 == True == 1.0, but not as arguments
    if t is list or t is tuple:
        return (t, tuple(_leaf(item, used) for item in x))
    if t is dict:
        return (dict, tuple((k, _leaf(item, used)) for k, item in x.items()))
    return _Same(x)


def _tensor_key(t):
    """What a fake copy of weight ``t`` is made of: its metadata (not its values)."""
    if t is None:
        return None
    try:
        return (t.dtype, tuple(t.shape), tuple(t.stride()), t.storage_offset(), t.layout, t.device.type)
    except (RuntimeError, NotImplementedError):  # an opaque tensor (no strides)
        return _Same(t)


def stride_fingerprint(graph: Graph) -> tuple | None:
    """A cheap structural key of everything :func:`eager_strides` reads: the inputs' names and
    types, the params' names, types and weight metadata (dtype, shape, strides), and per node its
    op (and, for a custom op, which implementation), its arguments (values by name, literals by
    type and value) and its outputs' names (and, for a node holding a sub-graph, whose results
    are dense buffers of its output types, those types). Nodes are a set: every value is defined
    once and read after its definition (checked here; otherwise None: not cached), so the strides
    do not depend on the order, and a rescheduled graph keeps its key. Whatever a rewrite changes
    that could change a stride (an op, an argument, a value read, a new node, a weight's layout)
    changes the key."""
    defined: set[str] = set()
    head = []
    for v in graph.inputs:
        head.append((v.name, v.type))
        defined.add(v.name)
    for v in graph.params:
        head.append((v.name, v.type, _tensor_key(graph.weights.get(v.name))))
        defined.add(v.name)
    if len(defined) != len(head):
        return None
    nodes = []
    for node in graph.nodes:
        used: list[str] = []
        args = _leaf(node.args, used)
        kwargs = _leaf(node.kwargs, used)
        if not defined.issuperset(used):
            return None  # not in topological order: the run reports it
        outs = tuple(v.name for v in node.outputs)
        for name in outs:
            if name in defined:
                return None  # defined twice: which one a reader sees depends on the order
            defined.add(name)
        if node.subgraph is not None:  # not run: its results are dense buffers of its output types
            op = (node.op, "region", tuple((v.type.dtype, v.type.shape) for v in node.outputs))
        else:
            op = node.op if node.op.startswith("aten.") else (node.op, _custom_impl(node.op))
        nodes.append((op, args, kwargs, outs))
    return (tuple(head), frozenset(nodes))


def _custom_impl(op: str):
    try:
        return _Same(lookup(op).impl)
    except Exception:  # unknown op: the run reports it
        return None


def erase_nodes(graph: Graph, nodes) -> None:
    """Take ``nodes`` out of ``graph`` at once (:meth:`Graph.erase_nodes`)."""
    graph.erase_nodes(nodes)


def channels_last_consumers(graph: Graph) -> frozenset[str]:
    """Names of the nodes whose one output is read only as the input of oneDNN convolutions."""
    users = graph.users()
    return frozenset(n.name for n in graph.nodes if len(n.outputs) == 1 and users.get(n.outputs[0].name)
                     and all(r.op in MKLDNN_CONVS and r.args[0] is n.outputs[0] for r in users[n.outputs[0].name]))


def channels_last_order(view) -> list[int] | None:
    """The dims of ``view``'s input from outermost to innermost in a dense layout that ``view``
    turns into a channels-last 4-D result, or None if there is none (or it is the contiguous one)."""
    src, out = view.args[0], view.outputs[0]
    if out.type.rank != 4 or not (src.type.is_static and out.type.is_static):
        return None
    n, c, h, w = (int(d) for d in out.type.shape)
    target = torch.empty_strided((n, c, h, w), (h * w * c, 1, w * c, c), device="meta")
    try:
        laid = target.view([int(d) for d in src.type.shape])
    except RuntimeError:
        return None
    # size-1 dims have no stride worth the name: keep them outermost, in order
    order = sorted(range(src.type.rank), key=lambda d: (src.type.shape[d] != 1, -laid.stride(d), d))
    return None if order == sorted(order) else order  # None too where plain contiguous already serves


def layout_copy(graph: Graph, view, channels_last: bool = False, src=None, *, before: Node | None = None) -> list:
    """Insert into ``graph``, just ``before`` a node (default: ``view``), the nodes that copy ``src``
    (default: the input of ``view``, a view or reshape its input's layout cannot serve) into a dense
    buffer ``view`` can serve, and return them (the last one's output is the copy): contiguous, or
    with ``channels_last``, laid out so that the 4-D result of ``view`` comes out channels-last
    where such a layout exists (a permute, a contiguous copy, the inverse permute). A oneDNN
    convolution reading the result then needs no reorder of its input on every call. ``view``
    still reads ``src``: the caller points it at the copy."""
    src = view.args[0] if src is None else src
    before = view if before is None else before
    order = channels_last_order(view) if channels_last else None
    where = {"source": view.source, "source_op": view.source_op}
    contiguous = {"memory_format": torch.contiguous_format}
    if order is None:
        (dense,) = graph.add_node("aten.clone.default", (src,), contiguous, [src.type],
                                  name=f"{view.name}_contiguous", before=before, **where)
        return [dense.producer]
    shape = [src.type.shape[d] for d in order]
    inverse = sorted(range(len(order)), key=lambda d: order[d])
    (ordered,) = graph.add_node("aten.permute.default", (src, order), {}, [TensorType(src.type.dtype, shape)],
                                name=f"{view.name}_order", before=before, **where)
    (dense,) = graph.add_node("aten.clone.default", (ordered,), contiguous, [ordered.type],
                              name=f"{view.name}_channels_last", before=before, **where)
    (laid,) = graph.add_node("aten.permute.default", (dense, inverse), {}, [src.type], name=f"{view.name}_laid_out",
                             before=before, **where)
    return [ordered.producer, dense.producer, laid.producer]


def contiguous_strides(shape) -> tuple[int, ...]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= max(int(d), 1)
    return tuple(reversed(out))


def slot_strides(shape, eager: tuple[int, ...] | None) -> tuple[int, ...]:
    """The strides a planned slot gets: eager's where they lay the value out densely, else contiguous."""
    shape = [int(d) for d in shape]
    if eager is None or any(d == 0 for d in shape) or not is_dense(shape, eager):
        return contiguous_strides(shape)
    return tuple(eager)


def same_layout(shape, a, b) -> bool:
    """True when strides ``a`` and ``b`` address ``shape`` alike (strides of size-1 dims do not matter)."""
    if a is None or b is None:
        return a == b
    return all(x == y for d, x, y in zip(shape, a, b) if int(d) != 1)


def copy_to_layout(graph: Graph, value, strides, *, name: str, before: Node | None = None,
                   after: Node | None = None) -> list:
    """Insert into ``graph`` (just ``before`` / ``after`` a node; default: at the end) the nodes that
    copy ``value`` into a fresh buffer whose strides are ``strides`` where those lay the value out
    densely (a permuted contiguous layout, as eager gives most results), else dense in the same
    order of dims, and return them (the last one's output is the copy): a permute into that order,
    a contiguous copy, the inverse permute. Readers of ``value`` still read it."""
    shape = [int(d) for d in value.type.shape]
    order = sorted(range(len(shape)), key=lambda d: (shape[d] != 1, -strides[d], d))
    place = {"before": before, "after": after}
    where = {"source": value.producer.source if value.producer else "",
             "source_op": value.producer.source_op if value.producer else ""}
    contiguous = {"memory_format": torch.contiguous_format}
    if order == sorted(order):
        (copy,) = graph.add_node("aten.clone.default", (value,), contiguous, [value.type], name=name, **place, **where)
        return [copy.producer]
    inverse = sorted(range(len(order)), key=lambda d: order[d])
    nodes = []
    (ordered,) = graph.add_node("aten.permute.default", (value, order), {},
                                [TensorType(value.type.dtype, [shape[d] for d in order])], name=f"{name}_order",
                                **place, **where)
    nodes.append(ordered.producer)
    (dense,) = graph.add_node("aten.clone.default", (ordered,), contiguous, [ordered.type], name=f"{name}_copy",
                              after=nodes[-1], **where)
    nodes.append(dense.producer)
    (laid,) = graph.add_node("aten.permute.default", (dense, inverse), {}, [value.type], name=name,
                             after=nodes[-1], **where)
    nodes.append(laid.producer)
    return nodes
