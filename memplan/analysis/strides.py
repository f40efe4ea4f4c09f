"""Strides eager PyTorch gives each value, found by running the graph on fake tensors.

The IR types carry shapes, not strides, but later view ops in a captured
graph rely on the strides eager produced (``permute`` then ``view`` only works
on the layout the exporter saw). A planned slot must therefore have those
strides. ``FakeTensorMode`` reproduces the CPU kernels' output strides without
computing anything (meta kernels alone do not: fused attention differs).
Passes and backends ask often, so the result is cached per graph version
(:func:`stride_fingerprint`), and each node's result per signature
(:class:`FakeRun`): a graph a pass rewrote in a few places runs those few nodes.

A pure analysis: nothing here changes a graph. The rewrites that insert layout
copies are in :mod:`memplan.passes.layout`.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from memplan.ir.graph import Graph, Node, Value, map_values
from memplan.ir.ops import flatten_outputs, lookup
from memplan.ir.types import is_dense

CACHE_SIZE = 8  # graph versions whose strides are kept (a compile needs one or two at a time)
_CACHE: OrderedDict[tuple, dict[str, tuple[int, ...]]] = OrderedDict()
_RUNS = 0  # fake runs made in this process (see fake_runs)


def eager_strides(graph: Graph, input_strides: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple[int, ...]]:
    """value name -> strides of that value when the graph runs eagerly on the CPU.

    The graph's inputs are dense row-major, or strided as ``input_strides`` says (by input name: a
    loop's body reads views of the values outside it).

    A pure analysis: ``graph`` is not changed. The graph runs on fake tensors once per graph
    version: the result is cached under :func:`stride_fingerprint`, which changes with anything
    the run reads, so a graph no pass changed (or only reordered, or only marked in place) is not
    run again, and any rewrite that could change a stride runs it anew. The caller owns the
    returned dict.
    """
    input_strides = {k: tuple(v) for k, v in (input_strides or {}).items() if v is not None}
    key = stride_fingerprint(graph)
    if key is not None and input_strides:
        key = (key, tuple(sorted(input_strides.items())))
    if key is not None:
        try:
            _CACHE.move_to_end(key)
            return dict(_CACHE[key])
        except KeyError:  # not cached (or just evicted by another thread)
            pass
    with FakeRun(graph, input_strides) as run:
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

    What a node's outputs look like (dtype, sizes, strides, storage offset) depends only on its op
    and on what its inputs look like, never on their values: so each node's result is kept per
    such signature for the whole process (:data:`_NODE_MEMO`), a node seen before is not run
    again, and a fake tensor is made for a value only when a node that is run reads it. A graph
    that a pass changed in a few places costs those few nodes.
    """

    def __init__(self, graph: Graph, input_strides: dict[str, tuple[int, ...]] | None = None):
        self.graph = graph
        self.input_strides = input_strides or {}
        self.meta: dict[str, tuple] = {}  # value name -> (dtype, sizes, strides, storage offset)
        self._fake: dict[str, torch.Tensor] = {}
        self._mode: FakeTensorMode | None = None

    def __enter__(self) -> "FakeRun":
        global _RUNS
        _RUNS += 1
        self._mode = FakeTensorMode(allow_non_fake_inputs=False)
        self._mode.__enter__()
        try:
            for v in self.graph.inputs:
                shape = tuple(int(d) for d in v.type.shape)
                strides = self.input_strides.get(v.name)
                if strides is None or len(strides) != len(shape):
                    strides = contiguous_strides(shape)
                self.meta[v.name] = (v.type.torch_dtype, shape, tuple(strides), 0)
            for v in self.graph.params:
                data = self.graph.weights.get(v.name)
                shape = tuple(int(d) for d in v.type.shape)
                try:
                    self.meta[v.name] = ((v.type.torch_dtype, shape, contiguous_strides(shape), 0) if data is None
                                         else (data.dtype, tuple(data.shape), tuple(data.stride()),
                                               data.storage_offset()))
                except (RuntimeError, NotImplementedError):  # an opaque tensor (no strides): fake it whole
                    fake = self._mode.from_tensor(data)
                    self._fake[v.name] = fake
                    self.meta[v.name] = (fake.dtype, tuple(fake.shape), _Same(data), 0)
        except BaseException as e:
            self._mode.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    def _tensor(self, name: str) -> torch.Tensor:
        """A fake tensor that looks like value ``name`` (made on first use)."""
        fake = self._fake.get(name)
        if fake is None:
            dtype, shape, strides, offset = self.meta[name]
            if offset == 0:
                fake = torch.empty_strided(shape, strides, dtype=dtype)
            else:
                extent = 0 if 0 in shape else 1 + sum((s - 1) * st for s, st in zip(shape, strides))
                fake = torch.empty(offset + extent, dtype=dtype).as_strided(shape, strides, offset)
            self._fake[name] = fake
        return fake

    def run(self, node: Node) -> None:
        """Run ``node`` on the fake values of its inputs (every one must have run already)."""
        meta = self.meta
        if node.subgraph is not None:  # a region writes its results into dense buffers it is given
            for v in node.outputs:
                shape = tuple(int(d) for d in v.type.shape)
                meta[v.name] = (v.type.torch_dtype, shape, contiguous_strides(shape), 0)
                self._fake.pop(v.name, None)
            return
        key = _node_key(node, meta)
        outs = _NODE_MEMO.get(key) if key is not None else None
        if outs is None:
            outs = self._run(node)
            if key is not None:
                if len(_NODE_MEMO) >= _NODE_MEMO_MAX:
                    _NODE_MEMO.clear()
                _NODE_MEMO[key] = outs
        for v, out in zip(node.outputs, outs):
            meta[v.name] = out
            self._fake.pop(v.name, None)  # a value defined again (a rewrite re-running a node)

    def _run(self, node: Node) -> tuple:
        args = map_values(node.args, lambda v: self._tensor(v.name))
        kwargs = map_values(node.kwargs, lambda v: self._tensor(v.name))
        opdef = lookup(node.op, node=node.name)
        results = flatten_outputs(opdef.impl(*args, **kwargs))
        if opdef.view:
            results = _real_view_strides(opdef, node, args, kwargs, results)
        return tuple((t.dtype, tuple(t.shape), tuple(t.stride()), t.storage_offset()) for t in results)

    def strides(self) -> dict[str, tuple[int, ...]]:
        """value name -> strides, for every value run so far (inputs and params included)."""
        return {name: m[2] for name, m in self.meta.items() if not isinstance(m[2], _Same)}


_NODE_MEMO: dict[tuple, tuple] = {}  # node signature -> its outputs' (dtype, sizes, strides, offset)
_NODE_MEMO_MAX = 1 << 16


def _node_key(node: Node, meta: dict[str, tuple]):
    """What decides a node's output layouts: its op (for a custom op, which implementation), its
    literal arguments, and the dtype, sizes, strides and storage offset of each value it reads
    (by position, not by name). None where a leaf is an opaque object."""
    def leaf(x):
        if isinstance(x, Value):
            return ("%", meta[x.name])
        t = type(x)
        if t in _PLAIN:
            return x
        if t in _TYPED:
            return (t, x)
        if t is list or t is tuple:
            return (t, tuple(leaf(item) for item in x))
        if t is dict:
            return (dict, tuple((k, leaf(item)) for k, item in x.items()))
        raise _Opaque
    try:
        op = node.op if node.op.startswith("aten.") else (node.op, _custom_impl(node.op))
        return (op, leaf(node.args), leaf(node.kwargs))
    except _Opaque:
        return None


class _Opaque(Exception):
    pass


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
