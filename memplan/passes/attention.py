"""Pass ``attention``: attention runs as a loop over query blocks, so no full score matrix and no full-size
kernel scratch is ever live.

Two forms of attention reach the planner:

- ``aten.scaled_dot_product_attention`` as captured (transformers' ``sdpa`` models). On the CPU its
  kernel allocates scratch that grows with the sequence: a boolean mask converted to floats (L x L x 4
  bytes: 16 MiB at 2,048 tokens) and its per-thread blocks, and its output is a fresh buffer;
- ``matmul -> (scale) -> (+ bias / mask) -> softmax -> matmul`` as eager-attention models (T5, ONNX
  exports) write it, decomposed into ``bmm`` over views: the full ``[..., Lq, Lk]`` scores are
  materialised, two or three times over (scaled, biased, normalised).

Both become one ``memplan.loop`` over blocks of queries. Its body is ``scaled_dot_product_attention``
on one block: the kernel's online-softmax over key blocks (FlashAttention's recurrence) holds only a
block of scores, and a block of the mask and of the bias is all that is converted. Each trip reads
``q``, ``k``, ``v`` through their strides (views, no contiguous copies) and writes its rows into the
loop's output buffer, a planned slot. Rows of attention are independent, so the result is exact up to
float rounding, with one difference from the eager matmul-softmax form: a query row whose every key is
masked with ``-inf`` gives 0 (as SDPA does), where eager's softmax gives NaN. Also:

- masks and additive biases are sliced by query block where they span the queries, read whole where
  they broadcast; several biases (T5's position bias plus its padding mask) are summed per block;
- ``is_causal`` becomes a per-block mask built from two small position vectors (``arange``), as the
  block's causal pattern depends on where it starts;
- grouped-query attention written as ``repeat_kv`` (``expand`` + ``clone`` of k and v to every query
  head) reads the un-repeated k and v instead (``enable_gqa``): the copies go;
- the output is laid out as eager's is (SDPA's ``[B, L, H, D]`` memory order), so later views hold.

The block is the largest divisor of the query length no larger than what keeps a trip's scratch within
option ``attention_block_bytes`` (default 256 KiB), or than ``attention_min_rows`` (default 256) where
that is more: the CPU kernel runs small blocks slowly. Under a memory budget the planned peak misses,
blocks are halved until it is met (or a block is one query). Bool masks become additive ones per block
(``where(mask, 0, -inf)``, what SDPA does itself, at half the speed). Option ``attention``: ``auto``
(default) keeps the rewrite only where the planned peak falls (both graphs fused and planned as the
rest of the pipeline would: fusion and attention tiling are decided together), ``on`` always, ``off``
never. Each attention left as it was has a reason in the pass log and ``cm.plan.why_not_fused(node)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from memplan.ir.graph import Graph, Node, Value
from memplan.ir.regions import LOOP
from memplan.ir.types import TensorType
from memplan.ir.types import itemsize as _itemsize
from memplan.passes.registry import register_pass

SDPA = "aten.scaled_dot_product_attention.default"
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
BLOCK_BYTES = 256 * 1024
# The CPU's flash-attention kernel runs a call on a few queries far below its speed (16 queries per call
# over 2,048 keys: 15x the time per query of one call on all of them; 256 queries: 1.3x, measured on 2
# cores): blocks are this large unless the budget asks for smaller.
MIN_ROWS = 256
_PASSTHROUGH = {"aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.expand.default",
                "aten.clone.default", "aten.alias.default"}
_SOFTMAX = {"aten._softmax.default", "aten.softmax.int", "aten._safe_softmax.default"}


@dataclass(frozen=True)
class AttentionOptions:
    """Options of ``attention``."""

    attention: Literal["auto", "on", "off"] = "auto"  # auto: only where the planned peak falls
    attention_block_bytes: int = BLOCK_BYTES  # scratch one query block may take (its mask, scores' rows)
    attention_min_rows: int = MIN_ROWS  # queries per block at least, unless the memory budget needs fewer


@dataclass
class Site:
    """One attention found in the graph, in SDPA's terms."""

    anchor: Node  # the node whose result the loop replaces (the SDPA, or the view of the last bmm)
    out: Value  # that result: [..., Lq, Ev]
    q: Value  # [..., Lq, E]
    k: Value  # [..., Lk, E], or ``kt`` [..., E, Lk] to transpose first
    v: Value  # [..., Lk, Ev]
    masks: list[Value] = field(default_factory=list)  # summed: additive float biases, or one bool mask
    causal: bool = False
    scale: float | None = None
    gqa: bool = False
    k_transposed: bool = False


# ---- finding attention ---------------------------------------------------------------------

def _sdpa_site(node: Node, users: dict[str, list[Node]]) -> tuple[Site | None, str]:
    """The site of an SDPA node, or (None, why not)."""
    bound = dict(zip(_SDPA_ARGS, node.args))
    bound.update(node.kwargs)
    q, k, v, mask = bound.get("query"), bound.get("key"), bound.get("value"), bound.get("attn_mask")
    if not all(isinstance(x, Value) for x in (q, k, v)) or not (mask is None or isinstance(mask, Value)):
        return None, "its query, key, value or mask is not a tensor of the graph"
    if float(bound.get("dropout_p", 0.0) or 0.0) != 0.0:
        return None, "attention with dropout (its mask is random: blocks would draw different masks)"
    scale = bound.get("scale")
    if scale is not None and not isinstance(scale, (int, float)):
        return None, "its scale is not a number"
    site = Site(node, node.outputs[0], q, k, v, [mask] if mask is not None else [],
                bool(bound.get("is_causal", False)), None if scale is None else float(scale),
                bool(bound.get("enable_gqa", False)))
    if site.causal and site.masks:
        return None, "is_causal together with a mask"
    if not site.gqa:
        _unrepeat_kv(site, users)
    return site, ""


def _unrepeat_kv(site: Site, users) -> None:
    """``repeat_kv`` (k and v expanded to every query head and copied) becomes ``enable_gqa`` on the
    un-repeated k and v, where both are repeated alike and nothing else reads the copies."""
    found = []
    for value in (site.k, site.v):
        view = value.producer
        if view is None or view.op not in ("aten.view.default", "aten._unsafe_view.default"):
            return
        clone = view.inputs[0].producer
        if clone is None or clone.op != "aten.clone.default" or len(users.get(clone.outputs[0].name, [])) != 1:
            return
        expand = clone.inputs[0].producer
        if expand is None or expand.op != "aten.expand.default":
            return
        unsq = expand.inputs[0].producer
        if unsq is None or unsq.op != "aten.unsqueeze.default":
            return
        base = unsq.inputs[0]
        r = base.type.rank
        if r < 3 or unsq.args[1] % (r + 1) != r - 2:  # [B, Hkv, L, D] -> [B, Hkv, 1, L, D]
            return
        rep = expand.outputs[0].type.shape[r - 2]
        want = tuple(base.type.shape[: r - 3]) + (base.type.shape[r - 3] * rep,) + tuple(base.type.shape[r - 2:])
        if tuple(value.type.shape) != want:
            return
        found.append((base, rep))
    if len(found) == 2 and found[0][1] == found[1][1]:
        site.k, site.v = found[0][0], found[1][0]
        site.gqa = True


def _single_use(value: Value, users, outputs: set[str]) -> bool:
    return len(users.get(value.name, [])) == 1 and value.name not in outputs


def _base(value: Value, lead: tuple, users, outputs) -> Value | None:
    """Walking back from a ``bmm`` operand through views, same-size expands and copies (each keeping
    the last two dims and the element order): the earliest value whose leading dims are ``lead``."""
    tail = tuple(value.type.shape[-2:])
    found = value if tuple(value.type.shape[:-2]) == lead else None
    cur = value
    while cur.producer is not None and cur.producer.op in _PASSTHROUGH and cur.producer.inputs:
        src = cur.producer.inputs[0]
        if (tuple(src.type.shape[-2:]) != tail or src.type.numel != cur.type.numel
                or src.type.dtype != cur.type.dtype):
            break
        fmt = cur.producer.kwargs.get("memory_format")
        if fmt is not None and str(fmt) not in ("torch.contiguous_format", "torch.preserve_format"):
            break
        cur = src
        if tuple(cur.type.shape[:-2]) == lead:
            found = cur
    return found


def _scalar(x, consts: dict[str, float]) -> float | None:
    """A Python number, or a one-element weight (an ONNX initializer), as a float; else None."""
    if isinstance(x, Value):
        return consts.get(x.name)
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _matmul(node: Node, lead: tuple) -> bool:
    """``aten.matmul`` of two operands with the batch dims ``lead`` (no broadcasting): ONNX's MatMul."""
    return (node.op == "aten.matmul.default" and len(node.args) == 2
            and all(isinstance(a, Value) and tuple(a.type.shape[:-2]) == lead for a in node.args))


def _scores_chain(x: Value, users, outputs, consts: dict[str, float], factor: float = 1.0):
    """Walk back from the softmax's input to the first matmul (a ``bmm`` under a view, or a batched
    ``matmul``): ``(matmul node, scale, biases)`` or None. Biases must be added after all scaling
    (their coefficient stays 1)."""
    node = x.producer
    if node is None:
        return None
    if _matmul(node, tuple(x.type.shape[:-2])):
        return node, factor, []
    if node.op in ("aten.view.default", "aten._unsafe_view.default") and node.inputs:
        src = node.inputs[0]
        if (src.producer is not None and src.producer.op == "aten.bmm.default"
                and tuple(src.type.shape[-2:]) == tuple(x.type.shape[-2:])):
            if _single_use(src, users, outputs):
                return src.producer, factor, []
        return None
    if node.op == "aten.bmm.default" and len(node.outputs) == 1:
        return node, factor, []
    if node.op in ("aten.mul.Tensor", "aten.div.Tensor") and len(node.args) == 2:
        a, b = node.args
        if node.op == "aten.mul.Tensor" and _scalar(a, consts) is not None and _scalar(b, consts) is None:
            a, b = b, a
        s = _scalar(b, consts)
        if (not isinstance(a, Value) or a.type.shape != x.type.shape or s is None or s == 0
                or not _single_use(a, users, outputs)):
            return None
        found = _scores_chain(a, users, outputs, consts,
                              factor * (s if node.op == "aten.mul.Tensor" else 1.0 / s))
        if found is None:
            return None
        bmm, scale, biases = found
        if biases:  # a bias added before this scaling would need scaling too
            return None
        return bmm, scale, biases
    if node.op == "aten.add.Tensor" and len(node.args) == 2 and not node.kwargs:
        for chain, bias in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
            if not (isinstance(chain, Value) and isinstance(bias, Value)):
                continue
            if chain.type.shape != x.type.shape or not _single_use(chain, users, outputs):
                continue
            if bias.type.dtype != x.type.dtype or bias.type.rank > x.type.rank:
                continue
            found = _scores_chain(chain, users, outputs, consts, factor)
            if found is not None and factor == 1.0:
                bmm, scale, biases = found
                return bmm, scale, biases + [bias]
        return None
    return None


def _pattern_site(softmax: Node, users, outputs, consts: dict[str, float]) -> tuple[Site | None, str]:
    """The site of ``bmm -> scale -> + bias -> softmax -> bmm`` around ``softmax``, or (None, why)."""
    x = softmax.inputs[0]
    rank = x.type.rank
    dim = softmax.args[1] if len(softmax.args) > 1 else softmax.kwargs.get("dim")
    if not isinstance(dim, int) or dim % max(rank, 1) != rank - 1 or rank < 3:
        return None, "a softmax over another dim than the last"
    if softmax.op == "aten._softmax.default" and len(softmax.args) > 2 and softmax.args[2]:
        return None, "a softmax that changes dtype"
    found = _scores_chain(x, users, outputs, consts) if _single_use(x, users, outputs) else None
    if found is None:
        return None, "not the scores of attention (matmul, scale, bias added after scaling, softmax)"
    bmm1, scale, biases = found
    lead = tuple(x.type.shape[:-2])
    probs = softmax.outputs[0]
    # forward: the probabilities feed (through views) the second bmm as its first operand
    cur, bmm2 = probs, None
    while _single_use(cur, users, outputs):
        reader = users[cur.name][0]
        if (reader.op == "aten.bmm.default" or _matmul(reader, lead)) and reader.args[0] is cur:
            bmm2 = reader
            break
        if (reader.op not in _PASSTHROUGH or reader.inputs[0] is not cur
                or reader.outputs[0].type.numel != cur.type.numel
                or tuple(reader.outputs[0].type.shape[-2:]) != tuple(cur.type.shape[-2:])):
            break
        cur = reader.outputs[0]
    if bmm2 is None:
        return None, "the attention probabilities are read by something other than one matmul with v"
    q = _base(bmm1.args[0], lead, users, outputs)
    kt = _base(bmm1.args[1], lead, users, outputs)
    v = _base(bmm2.args[1], lead, users, outputs)
    if q is None or kt is None or v is None:
        return None, "q, k or v does not reshape back to the scores' batch dims"
    out = bmm2.outputs[0]
    anchor = bmm2
    readers = users.get(out.name, [])
    if (len(readers) == 1 and out.name not in outputs
            and readers[0].op in ("aten.view.default", "aten._unsafe_view.default")
            and tuple(readers[0].outputs[0].type.shape[:-2]) == lead
            and tuple(readers[0].outputs[0].type.shape[-2:]) == tuple(out.type.shape[-2:])):
        anchor, out = readers[0], readers[0].outputs[0]
    if tuple(out.type.shape[:-2]) != lead:
        return None, "the attention output does not reshape to the scores' batch dims"
    lq, lk = x.type.shape[-2:]
    if not (q.type.shape[-2] == lq and kt.type.shape[-1] == lk and q.type.shape[-1] == kt.type.shape[-2]
            and v.type.shape[-2] == lk and tuple(out.type.shape[-2:]) == (lq, v.type.shape[-1])):
        return None, "q, k, v and the output do not line up as attention's [Lq, E] [E, Lk] [Lk, Ev] [Lq, Ev]"
    for b in biases:
        if not _broadcasts(b.type.shape, x.type.shape):
            return None, f"bias %{b.name} does not broadcast to the scores"
    return Site(anchor, out, q, kt, v, biases, False, scale, False, k_transposed=True), ""


def _broadcasts(small, big) -> bool:
    if len(small) > len(big):
        return False
    return all(s == 1 or s == b for s, b in zip(reversed(small), reversed(big)))


def find_sites(graph: Graph, explain: dict[str, str] | None = None) -> list[Site]:
    """Every attention of ``graph`` the pass can tile (the others' reasons go to ``explain``)."""
    explain = {} if explain is None else explain
    users = graph.users()
    outputs = {v.name for v in graph.outputs}
    consts = {}
    for p in graph.params:
        data = graph.weights.get(p.name)
        if data is not None and data.numel() == 1 and data.dtype.is_floating_point:
            consts[p.name] = float(data.reshape(()).item())
    sites = []
    for node in graph.nodes:
        if node.op == SDPA:
            site, why = _sdpa_site(node, users)
        elif node.op in _SOFTMAX:
            site, why = _pattern_site(node, users, outputs, consts)
            if site is None and why.startswith("not the scores"):
                continue  # an ordinary softmax
        else:
            continue
        if site is not None:
            why = _static(site)
        if why:
            explain.setdefault(node.name, f"attention not tiled: {why}")
            continue
        sites.append(site)
    return sites


def _static(site: Site) -> str:
    values = [site.q, site.k, site.v, site.out, *site.masks]
    if not all(v.type.is_static for v in values):
        return "symbolic shapes"
    if site.q.type.rank < 3:
        return "a query of rank below 3"
    if any(m.type.rank < 2 for m in site.masks):
        return "a mask or bias of rank below 2 (not a [..., Lq, Lk] mask)"
    if site.out.type.rank != site.q.type.rank or any(m.type.rank > site.q.type.rank for m in site.masks):
        return "a mask or an output of higher rank than the query (the batch dims broadcast)"
    if any(m.type.dtype not in (site.q.type.dtype, "bool") for m in site.masks):
        return "a mask of another dtype than the query's"
    return ""


# ---- rewriting -----------------------------------------------------------------------------

def _block_rows(site: Site, block_bytes: int, min_rows: int = 1) -> int:
    """Query rows per trip: the largest divisor of Lq no larger than the rows whose per-trip scratch
    fits ``block_bytes``, or than ``min_rows`` where that is more."""
    q = site.q.type
    lq = int(q.shape[-2])
    lk = int(site.k.type.shape[-1] if site.k_transposed else site.k.type.shape[-2])
    heads = math.prod(int(d) for d in site.out.type.shape[:-2])
    mask_heads = max((math.prod(int(d) for d in m.type.shape[:-2]) for m in site.masks), default=1)
    item = _itemsize(q.dtype)
    row = 4 * lk * max(mask_heads, 1) + item * heads * (int(q.shape[-1]) + int(site.out.type.shape[-1]))
    return divisor_at_most(lq, max(min_rows, block_bytes // max(row, 1)))


def divisor_at_most(n: int, cap: int) -> int:
    """The largest divisor of ``n`` that is at most ``cap`` (1 at least)."""
    rows = max(1, min(n, cap))
    while n % rows:
        rows -= 1
    return rows


def _output_order(site: Site, strides) -> list[int] | None:
    """The dim order of eager's output layout (a permutation ``p`` with ``out.permute(p)`` dense), or
    None where it is no permutation of a dense layout."""
    from memplan.analysis.strides import contiguous_strides, same_layout

    shape = tuple(int(d) for d in site.out.type.shape)
    rank = len(shape)
    eager = strides.get(site.out.name)
    candidates = [list(range(rank))]
    if rank >= 3:  # SDPA on the CPU: [..., H, L, D] laid out as [..., L, H, D]
        p = list(range(rank))
        p[rank - 3], p[rank - 2] = p[rank - 2], p[rank - 3]
        candidates.append(p)
    for p in candidates:
        permuted = [shape[d] for d in p]
        dense = contiguous_strides(permuted)
        back = [0] * rank
        for i, d in enumerate(p):
            back[d] = dense[i]
        if eager is None or same_layout(shape, tuple(back), tuple(eager)):
            return p
    return None


_MASK_VIEWS = {"aten.expand.default", "aten.unsqueeze.default"}


def _mask_recipe(mask: Value, lq: int, users: dict):
    """How to compute one query block of ``mask`` from small tensors: ``(nodes in graph order, leaves,
    {value name: its query dim or None})``, or None. The mask must be made by elementwise and
    broadcast ops (and ``unsqueeze`` / ``expand``) from values of at most 1/16 of its size (position
    ids, a padding mask: transformers builds its causal mask so, an L x L bool), read only by
    attention; each value's query dim follows the mask's by broadcasting."""
    from memplan.ir.ops import OpKind, lookup
    from memplan.passes.fusable import why_not_pointwise

    if mask.type.rank < 2 or int(mask.type.shape[-2]) != lq or lq < 2 or not mask.type.is_static:
        return None
    readers = users.get(mask.name, [])
    if not readers or any(r.op not in (SDPA, "aten.add.Tensor") for r in readers):
        return None
    qdims: dict[str, int | None] = {}
    chain: dict[str, Node] = {}
    leaves: dict[str, Value] = {}
    stack: list[tuple[Value, int | None]] = [(mask, mask.type.rank - 2)]
    while stack:
        v, d = stack.pop()
        if v.name in qdims:
            if qdims[v.name] != d:
                return None
            continue
        qdims[v.name] = d
        if v is not mask and v.type.is_static and v.type.numel * 16 <= mask.type.numel:
            leaves[v.name] = v
            continue
        node = v.producer
        if node is None or len(node.outputs) != 1:
            return None
        if node.op not in _MASK_VIEWS and (why_not_pointwise(node) is not None
                                           or lookup(node.op, node=node.name).kind not in (OpKind.ELEMENTWISE,
                                                                                           OpKind.BROADCAST)):
            return None
        chain[node.name] = node
        for u in dict.fromkeys(node.inputs):
            du = _input_query_dim(node, v, u, d)
            if du is False:
                return None
            stack.append((u, du))
    for node in chain.values():  # nothing outside the chain may need an intermediate of it
        out = node.outputs[0]
        if out is not mask and any(r.name not in chain for r in users.get(out.name, [])):
            return None
    if any(qdims[n] is not None and int(leaves[n].type.shape[qdims[n]]) != lq for n in leaves):
        return None
    order = {id(n): i for i, n in enumerate(_graph_nodes(mask))}
    nodes = sorted(chain.values(), key=lambda n: order.get(id(n), 0))
    return nodes, list(leaves.values()), qdims, mask.name


def _graph_nodes(value: Value) -> list[Node]:
    """The nodes that ``value`` depends on, in an order where each comes after its inputs."""
    seen: dict[int, Node] = {}
    out: list[Node] = []

    def visit(v: Value):
        node = v.producer
        if node is None or id(node) in seen:
            return
        seen[id(node)] = node
        for u in node.inputs:
            visit(u)
        out.append(node)
    visit(value)
    return out


def _input_query_dim(node: Node, out: Value, u: Value, d: int | None):
    """The query dim of input ``u`` of ``node`` given its output's ``d`` (None: it has none; False: the
    input spans the query dim in a way a block cannot slice)."""
    if d is None:
        return None
    if node.op == "aten.unsqueeze.default":
        k = node.args[1] % out.type.rank
        return None if d == k else (d - 1 if d > k else d)
    du = d - (out.type.rank - u.type.rank)  # broadcasting aligns trailing dims
    if du < 0:
        return None
    size = int(u.type.shape[du])
    if size == int(out.type.shape[d]):
        return du
    return None if size == 1 else False


def _replay(body: Graph, recipe, tile_of: dict[str, Value], rows: int) -> Value:
    """Compute one query block of a mask in ``body`` from its leaves' tiles (``tile_of``)."""
    nodes, _, qdims, mask = recipe
    env = dict(tile_of)
    for node in nodes:
        out = node.outputs[0]
        shape = list(out.type.shape)
        d = qdims.get(out.name)
        if d is not None:
            shape[d] = rows
        args = list(node.args)
        if node.op == "aten.expand.default":
            sizes = list(args[1])
            if d is not None and sizes[d] != -1:
                sizes[d] = rows
            args[1] = sizes
        args = [env[a.name] if isinstance(a, Value) else a for a in args]
        kwargs = {k: env[a.name] if isinstance(a, Value) else a for k, a in node.kwargs.items()}
        (env[out.name],) = body.add_node(node.op, tuple(args), kwargs, [TensorType(out.type.dtype, tuple(shape))],
                                         name=node.name, source=node.source, source_op=node.source_op or node.op)
    return env[mask]


def tile_site(graph: Graph, site: Site, rows: int, order: list[int],
              users: dict | None = None) -> tuple[Node, Value]:
    """Rewrite ``site`` into a loop over query blocks of ``rows`` rows; return the loop node and the
    value that now stands for the attention's result. A mask
    computed elementwise from small tensors (``users``: the graph's readers, to check that only
    attention reads it) is recomputed per block from them instead of read whole."""
    q, out = site.q, site.out
    rank = q.type.rank
    lq = int(q.type.shape[-2])
    trips = lq // rows
    anchor = site.anchor
    before = anchor
    k = site.k
    if site.k_transposed:
        perm = list(range(k.type.rank))
        perm[-2], perm[-1] = perm[-1], perm[-2]
        shape = list(k.type.shape)
        shape[-2], shape[-1] = shape[-1], shape[-2]
        (k,) = graph.add_node("aten.permute.default", (k, perm), {}, [TensorType(k.type.dtype, tuple(shape))],
                              name=f"{k.name}_t", before=before, source=anchor.source, source_op="aten.transpose")
    inputs: list[Value] = [q, k, site.v]
    slicings: list[list] = [["slice", rank - 2, rows, rows], ["full"], ["full"]]
    recipes = []
    for m in site.masks:
        recipe = _mask_recipe(m, lq, users) if users is not None else None
        recipes.append(recipe)
        for v, d in ([(leaf, recipe[2][leaf.name]) for leaf in recipe[1]] if recipe else
                     [(m, m.type.rank - 2 if m.type.rank >= 2 and int(m.type.shape[-2]) == lq and lq > 1
                       else None)]):
            if any(v is w for w in inputs):
                continue
            inputs.append(v)
            slicings.append(["full"] if d is None else ["slice", d, rows, rows])
    lk = int(k.type.shape[-2])
    if site.causal:
        for n, hint in ((lq, "query_positions"), (lk, "key_positions")):
            (pos,) = graph.add_node("aten.arange.start_step", (0, n), {}, [TensorType("i64", (n,))], name=hint,
                                    before=before, source=anchor.source, source_op="causal mask of attention")
            inputs.append(pos)
        slicings += [["slice", 0, rows, rows], ["full"]]
    body = Graph(f"{anchor.name}_body")
    tiles = []
    for v, s in zip(inputs, slicings):
        shape = list(v.type.shape)
        if s[0] == "slice":
            shape[s[1]] = rows
        tiles.append(body.add_input(v.name, TensorType(v.type.dtype, tuple(shape))))
    q_t, k_t, v_t = tiles[:3]
    tile_of = {v.name: t for v, t in zip(inputs, tiles)}
    mask = None
    for m, recipe in zip(site.masks, recipes):
        m = _replay(body, recipe, tile_of, rows) if recipe else tile_of[m.name]
        if m.type.dtype == "bool" and q.type.dtype == "f32":  # SDPA converts a bool mask itself, at half
            m = _additive(body, m, q.type.dtype)  # its speed on the CPU
        if mask is None:
            mask = m
        else:
            shape = _broadcast_shape(mask.type.shape, m.type.shape)
            (mask,) = body.add_node("aten.add.Tensor", (mask, m), {}, [TensorType(m.type.dtype, shape)],
                                    name="block_bias", source_op="sum of the attention biases")
    if site.causal:
        qpos, kpos = tiles[-2:]
        (col,) = body.add_node("aten.unsqueeze.default", (qpos, 1), {}, [TensorType("i64", (rows, 1))], name="qpos")
        (row,) = body.add_node("aten.unsqueeze.default", (kpos, 0), {}, [TensorType("i64", (1, lk))], name="kpos")
        (keep,) = body.add_node("aten.le.Tensor", (row, col), {}, [TensorType("bool", (rows, lk))],
                                name="causal_block", source_op="causal mask of one query block")
        mask = _additive(body, keep, q.type.dtype) if q.type.dtype == "f32" else keep
    kwargs = {"scale": site.scale} if site.scale is not None else {}
    if site.gqa:
        kwargs["enable_gqa"] = True
    tile_out = list(out.type.shape)
    tile_out[-2] = rows
    (att,) = body.add_node(SDPA, (q_t, k_t, v_t, mask), kwargs, [TensorType(out.type.dtype, tuple(tile_out))],
                           name=anchor.name, source=anchor.source,
                           source_op=anchor.source_op or _short(anchor.op))
    if order != list(range(rank)):
        (att,) = body.add_node("aten.permute.default", (att, order), {},
                               [TensorType(out.type.dtype, tuple(tile_out[d] for d in order))], name="block_rows")
    body.outputs = [att]
    concat = order.index(rank - 2)
    loop_shape = tuple(int(out.type.shape[d]) for d in order)
    spec = {"trips": trips, "inputs": slicings, "outputs": [["concat", concat]]}
    (result,) = graph.add_node(LOOP, tuple(inputs), spec,
                               [TensorType(out.type.dtype, loop_shape)], name=f"attention_{anchor.name}",
                               subgraph=body, before=before, source=anchor.source,
                               source_op="attention over query blocks")
    loop = result.producer
    if order != list(range(rank)):
        inverse = [order.index(d) for d in range(rank)]
        (result,) = graph.add_node("aten.permute.default", (result, inverse), {}, [out.type],
                                   name=f"{anchor.name}_heads", before=before, source=anchor.source,
                                   source_op="attention output in eager's layout")
    graph.replace_all_uses(out, result)
    return loop, result


def _additive(body: Graph, keep: Value, dtype: str) -> Value:
    """A bool mask (True: attend) as the additive mask SDPA makes of it: 0 where kept, -inf elsewhere."""
    (mask,) = body.add_node("aten.where.Scalar", (keep, 0.0, float("-inf")), {},
                            [TensorType(dtype, keep.type.shape)], name=f"{keep.name}_additive",
                            source_op="bool mask as an additive one")
    return mask


def _broadcast_shape(a, b) -> tuple:
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + tuple(a)
    b = (1,) * (rank - len(b)) + tuple(b)
    return tuple(x if y == 1 else y for x, y in zip(a, b))


def _short(op: str) -> str:
    parts = op.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "aten" else op


def tile_attention(graph: Graph, block_bytes: int = BLOCK_BYTES, explain: dict[str, str] | None = None,
                   min_rows: int = 1, shrink: int = 0, whole: list | None = None,
                   one_trip: bool = False) -> list[Node]:
    """Tile every attention :func:`find_sites` finds; return the loop nodes made. Blocks are as
    :func:`_block_rows` chooses, divided by ``2 ** shrink`` (to meet a budget); ``whole`` collects the
    attentions left whole because one block held all their queries (``one_trip``: those become a
    one-trip loop, for a backend that runs the loop as one kernel)."""
    from memplan.analysis.strides import eager_strides

    explain = {} if explain is None else explain
    sites = find_sites(graph, explain)
    strides = eager_strides(graph) if sites else {}
    users = graph.users()  # as captured: a mask only attention reads is recomputed per block
    loops = []
    renamed: dict[int, Value] = {}  # an attention's result, replaced by its loop's: later sites read that
    for site in sites:
        site.q, site.k, site.v = (renamed.get(id(v), v) for v in (site.q, site.k, site.v))
        site.masks = [renamed.get(id(m), m) for m in site.masks]
        lq = int(site.q.type.shape[-2])
        rows = _block_rows(site, block_bytes, min_rows)
        rows = divisor_at_most(lq, rows >> shrink) if shrink else rows
        # a matmul-softmax site gains even whole (its scores are never materialised); an SDPA one only
        # where a loop is one kernel
        if rows == lq and not (one_trip or site.k_transposed):
            explain.setdefault(site.anchor.name, f"attention not tiled: one block holds all its {lq} queries "
                                                 f"(attention_block_bytes {block_bytes} B, attention_min_rows "
                                                 f"{min_rows})")
            if whole is not None:
                whole.append(site.anchor.name)
            continue
        order = _output_order(site, strides)
        if order is None:
            explain.setdefault(site.anchor.name, "attention not tiled: its output is laid out in no dense order")
            continue
        loop, result = tile_site(graph, site, rows, order, users)
        renamed[id(site.out)] = result
        loops.append(loop)
    if loops:
        graph.eliminate_dead_code()  # the pattern's matmuls, softmax and repeated k, v
    return loops


@register_pass("attention", options=AttentionOptions, produces=("regions",))
def attention(graph, ctx):
    """Attention (SDPA, or matmul-softmax-matmul) becomes a loop over query blocks (in ``auto`` mode only
    where the planned peak falls)."""
    from memplan.errors import MemplanError
    from memplan.passes.fusion import _adopt, _fmt, better_plan

    mode = ctx.options.get("attention", "auto")
    if mode == "off":
        return graph
    block_bytes = int(ctx.options.get("attention_block_bytes", BLOCK_BYTES))
    min_rows = int(ctx.options.get("attention_min_rows", MIN_ROWS))
    if block_bytes < 1 or min_rows < 1:
        raise MemplanError(f"options attention_block_bytes and attention_min_rows must be at least 1, got "
                           f"{block_bytes} and {min_rows}")
    explain: dict[str, str] = {}
    plain = None
    budget = ctx.memory_budget
    one_trip = bool(getattr(ctx.get_backend(), "one_kernel_regions", False))  # a loop is one kernel there
    shrink, trial, loops, peaks = 0, graph, [], None
    while True:  # blocks as the options say; halved while the budget is not met and blocks can shrink
        attempt = graph.copy()
        whole: list[str] = []
        made = tile_attention(attempt, block_bytes, explain if shrink == 0 else {}, min_rows, shrink, whole,
                              one_trip=one_trip and shrink == 0)
        if not made:
            if budget is None or not whole or shrink > 32:
                break
            plain = _peak_after_fusion(graph, ctx) if plain is None else plain
            if plain is not None and plain <= budget:
                break
            shrink += 1  # the budget is missed with attention whole: try blocks under attention_min_rows
            continue
        if mode == "on" and budget is None:
            trial, loops = attempt, made
            break
        tiled = _peak_after_fusion(attempt, ctx)
        if mode == "auto" and plain is None:
            plain = _peak_after_fusion(graph, ctx)
        if tiled is not None and (not loops or peaks[0] is None or tiled < peaks[0]):
            trial, loops, peaks = attempt, made, (tiled, plain)
        if budget is None or (tiled is not None and tiled <= budget) or max(n.kwargs["trips"] for n in made) >= max(
                int(n.args[0].type.shape[-2]) for n in made):
            break
        shrink += 1
    if loops and mode == "auto" and not better_plan(ctx, (peaks[0], trial), (plain, graph)):
        for loop in loops:
            explain.setdefault(next(n.name for n in loop.subgraph.nodes if n.op == SDPA),
                               "attention not tiled: neither the planned peak nor the modelled time would fall "
                               f"({_fmt(peaks[0])} tiled, {_fmt(plain)} as it is)")
        loops = []
    if loops:
        _adopt(graph, trial)
    _record(ctx, loops, explain, peaks)
    return graph


def _peak_after_fusion(graph: Graph, ctx) -> int | None:
    """The planned peak of ``graph`` with its elementwise chains fused (as ``fuse`` will do next):
    attention's scratch only matters where it is not hidden under a chain fusion removes."""
    from memplan.passes.fusion import TILE_BYTES, _planned_peak, fuse_graph

    trial = graph.copy()
    if ctx.options.get("fusion", "auto") != "off":
        fuse_graph(trial, int(ctx.options.get("fusion_tile_bytes", TILE_BYTES)),
                   one_trip=bool(getattr(ctx.get_backend(), "one_kernel_regions", False)))
    return _planned_peak(trial, ctx)


def _record(ctx, loops, explain, peaks) -> None:
    records = ctx.records.setdefault("fusion", {})
    records.setdefault("why_not_fused", {}).update(explain)
    records["attention"] = [{"loop": n.name, "trips": n.kwargs["trips"]} for n in loops]
    if loops:
        line = f"attention: {len(loops)} attentions run over query blocks ({loops[0].kwargs['trips']} trips)"
        if peaks is not None:
            from memplan.passes.fusion import _fmt
            line += f" (planned peak {_fmt(peaks[0])} tiled, {_fmt(peaks[1])} as it was)"
        ctx.log.append(line)
    elif explain:
        ctx.log.append(f"attention: none tiled ({next(iter(explain.values()))})")
