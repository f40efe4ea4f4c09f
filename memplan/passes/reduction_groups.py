"""Row reductions with their elementwise prologue as one region, for backends that run a region as one kernel.

TVM's lattice puts an elementwise producer into the reduction it feeds; Inductor does the same
(``add`` + ``native_layer_norm`` is one kernel there, writing both the sum and the normalised rows).
On a backend with ``one_kernel_regions`` (Triton) such a region is one launch that reads the
prologue's inputs, computes it row by row in registers, writes the prologue results that others
still read (a transformer's residual stream), and reduces: the prologue's intermediates never
touch memory. On the PyTorch backend it would only run the same ops one by one, so ``fuse``
forms these regions only for one-kernel backends.

A group: a ``native_layer_norm``, ``_softmax`` or ``_log_softmax`` (over trailing dims), or a row
statistic (``mean``/``sum`` over the last dim, kept: RMS norm's) with its elementwise epilogue
(what computes per row from it: ``+ eps``, ``rsqrt``, ``x * r``, ``* weight``), and the
elementwise and broadcast nodes of the reduced input's shape that produce its input, walking back
from it (and embedding lookups whose table rows are the rows reduced: :func:`is_row_gather`) (:func:`memplan.passes.fusable.why_not_pointwise` decides who may join), none of whose outside
inputs depends on a member (no cycle). It becomes a ``memplan.group`` whose body is the members
then the reduction; its outputs are every member result read outside it.
"""
from __future__ import annotations

from memplan.ir.graph import Graph, Node, Value
from memplan.ir.regions import GROUP
from memplan.passes.fusable import epilogue_of, why_not_pointwise

ROW_REDUCTIONS = frozenset({"aten.native_layer_norm.default", "aten._softmax.default", "aten._log_softmax.default"})


def _trailing(node: Node) -> bool:
    """Does the reduction normalise over trailing dims (the rows a kernel holds)?"""
    x = node.inputs[0]
    if node.op == "aten.native_layer_norm.default":
        return isinstance(node.args[1], (list, tuple))
    dim = node.args[1] if len(node.args) > 1 else None
    return isinstance(dim, int) and x.type.rank > 0 and dim % x.type.rank == x.type.rank - 1 and not (
        len(node.args) > 2 and node.args[2])


def is_row_gather(node: Node, shape: tuple) -> bool:
    """Is ``node`` an ``aten.embedding`` whose rows are the reduction's rows: a ``[V, D]`` table
    gathered by integer indices of the row dims, ``D`` the last dim of ``shape`` (an embedding
    lookup feeding layer norm, as BERT and GPT-2 begin)?"""
    if node.op != "aten.embedding.default" or len(node.outputs) != 1 or len(node.args) < 2:
        return False
    table, ids = node.args[0], node.args[1]
    if not all(v.type.is_static for v in (table, ids)) or table.type.rank != 2:
        return False
    return (ids.type.dtype in ("i64", "i32") and tuple(ids.type.shape) == tuple(shape[:-1])
            and int(table.type.shape[1]) == int(shape[-1]))


def _last_dim_only(red: Node) -> bool:
    """Does the reduction reduce the last dim alone (the rows a gathered table row fills)?"""
    if red.op == "aten.native_layer_norm.default":
        return len(red.args[1]) == 1
    return True


def find_reduction_groups(graph: Graph, explain: dict[str, str] | None = None) -> list[list[Node]]:
    """Groups (members in graph order, the reduction last) of row reductions and their prologues."""
    explain = {} if explain is None else explain
    producer = {v.name: n for n in graph.nodes for v in n.outputs}
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    claimed: set[str] = set()
    groups = []
    for red in graph.nodes:
        statistic = is_row_statistic(red)
        if not statistic and (red.op not in ROW_REDUCTIONS or not _trailing(red)):
            continue
        if red.name in claimed or not all(v.type.is_static for v in red.inputs):
            continue
        shape = tuple(red.inputs[0].type.shape)
        members: dict[str, Node] = {}
        frontier = [red.inputs[0]]
        while frontier:
            p = producer.get(frontier.pop().name)
            if p is None or p.name in members or p.name in claimed:
                continue
            if tuple(p.outputs[0].type.shape) != shape:
                continue
            if is_row_gather(p, shape) and _last_dim_only(red):
                members[p.name] = p  # its table and indices are read from outside the group
                continue
            if why_not_pointwise(p) is not None:
                continue
            members[p.name] = p
            frontier.extend(u for u in p.inputs if tuple(u.type.shape) == shape)
        stat_shape = tuple(int(d) for d in red.outputs[0].type.shape)
        epilogue = epilogue_of(graph, [*members.values(), red], (tuple(int(d) for d in shape), stat_shape), claimed,
                               position) if statistic else []
        if not members and not epilogue:
            continue
        group = sorted(members.values(), key=lambda n: position[n.name]) + [red] + epilogue
        if epilogue and _cycle(group, producer, position):
            group = group[:-len(epilogue)]
            if not members:
                continue
        if _cycle(group, producer, position):  # fall back to the direct producer alone
            group = [producer[red.inputs[0].name], red]
            if _cycle(group, producer, position):
                explain.setdefault(red.name, "its elementwise producer reads a value computed from it outside "
                                             "the group (a cycle)")
                continue
        claimed.update(n.name for n in group)
        groups.append(group)
    return groups


def is_row_statistic(node: Node) -> bool:
    """Is ``node`` a float ``mean`` or ``sum`` over the last dim that keeps it (``[..., 1]``): the
    statistic of RMS norm (``x * rsqrt(mean(x ** 2, -1, keepdim=True) + eps)``)?"""
    if node.op not in ("aten.mean.dim", "aten.sum.dim_IntList") or len(node.outputs) != 1:
        return False
    x = node.args[0]
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if not x.type.is_static or x.type.rank == 0 or x.type.dtype not in ("f32", "f16", "bf16") or "dtype" in node.kwargs:
        return False
    return keep is True and isinstance(dims, (list, tuple)) and len(dims) == 1 and isinstance(dims[0], int) \
        and dims[0] % x.type.rank == x.type.rank - 1 and node.outputs[0].type.dtype == x.type.dtype


def _cycle(group: list[Node], producer: dict[str, Node], position: dict[str, int]) -> bool:
    """Would a region of ``group`` depend on itself (an outside input computed from a member)?"""
    names = {n.name for n in group}
    first = min(position[n.name] for n in group)
    stack = [producer[u.name] for n in group for u in n.inputs
             if u.name in producer and producer[u.name].name not in names]
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        if node.name in seen or position[node.name] < first:
            continue  # made before every member: it cannot read one
        seen.add(node.name)
        if node.name in names:
            return True
        stack.extend(producer[u.name] for u in node.inputs if u.name in producer)
    return False


def group_reduction(graph: Graph, group: list[Node], name: str | None = None) -> Node:
    """Rewrite ``group`` (members in graph order: a reduction last, or a matrix product first) into
    one ``memplan.group`` placed at its last member, named ``name`` (``fused_<last member>`` by
    default); return it (the caller reorders the graph topologically)."""
    made = {v.name for n in group for v in n.outputs}
    names = {n.name for n in group}
    inputs = list(dict.fromkeys(u for n in group for u in n.inputs if u.name not in made))
    read_outside = {v.name for n in graph.nodes if n.name not in names for v in n.inputs}
    read_outside |= {v.name for v in graph.outputs}
    outputs = [v for n in group for v in n.outputs if v.name in read_outside]
    red = group[-1]
    body = Graph(f"{red.name}_body")
    env: dict[str, Value] = {u.name: body.add_input(u.name, u.type) for u in inputs}
    for n in group:
        results = body.add_node(n.op, _map(n.args, env), _map(n.kwargs, env), [v.type for v in n.outputs],
                                name=n.name, out_names=[v.name for v in n.outputs], source=n.source,
                                source_op=n.source_op)
        env.update({v.name: r for v, r in zip(n.outputs, results)})
    body.outputs = [env[v.name] for v in outputs]
    results = graph.add_node(GROUP, tuple(inputs), {}, [v.type for v in outputs], name=name or f"fused_{red.name}",
                             out_names=[f"{v.name}_fused" for v in outputs], subgraph=body, before=red,
                             source=red.source, source_op=" + ".join(_short(n.op) for n in group))
    for old, new in zip(outputs, results):
        graph.replace_all_uses(old, new)
    graph.erase_nodes(group)
    return results[0].producer


def _map(obj, env):
    from memplan.ir.graph import map_values
    return map_values(obj, lambda v: env[v.name])


def _short(op: str) -> str:
    parts = op.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "aten" else op
