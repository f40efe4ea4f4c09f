"""The attention template: an attention loop as one FlashAttention forward kernel.

The ``attention`` pass makes attention a ``memplan.loop`` over query blocks whose body is
``aten.scaled_dot_product_attention`` on one block, preceded by the ops that build the block's mask
and followed by a ``permute`` that lays the rows out as eager does. On the CPU each trip calls the
aten kernel; here the whole loop is *one* launch. A program takes ``BLOCK_M`` queries of one batch
and head, loads them once, and walks the keys in blocks of ``BLOCK_N`` with the online-softmax
recurrence (FlashAttention): a running row max ``m_i``, a running sum ``l_i`` of ``exp(score - m_i)``
and an accumulator ``acc`` of those weights times the values, both rescaled by ``exp(m_old - m_new)``
when the max grows. Only a ``BLOCK_M x BLOCK_N`` block of scores ever exists, in registers: the kernel
needs no scratch, and writes its rows straight into the loop's planned output.

- q, k, v and every mask input are read through their strides (head views of a projection, a
  transposed k: no copies); the output is stored through the loop output's planned strides, in the
  body's permuted order;
- the mask is computed in the kernel, block by block, by the body's own ops (:mod:`.pointwise`'s
  translations) from the loop's mask inputs, each addressed by the score position it broadcasts to
  (a broadcast dim adds no address term); what does not depend on the key is computed once, before
  the key loop. A position vector that is ``arange(0, n)`` (the pass's causal positions, a model's
  position ids) is the query or key index itself and is never read; where the mask is causal in those
  positions (``key <= query``), the key blocks after a query block's last row are masked for all its
  rows and skipped;
- grouped-query attention (``enable_gqa``): query head ``h`` reads key/value head ``h // group``;
- a row whose keys are all masked is 0, as aten's SDPA gives (``l_i == 0`` is guarded);
- float32 accumulation; float16 and bfloat16 inputs are computed in float32, the dots too
  (``input_precision="ieee"``: no TF32, so a GPU gives eager's float32 results).

A loop this template cannot translate (a mask op without a translation, an output not laid out by
query blocks, ...) keeps its per-trip PyTorch code; :class:`NotTranslatable` says why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from memplan.backends.triton.codegen import (Arg, Kernel, KernelArgs, KernelNames, NotTranslatable, comment_lines,
                                             comment_text, decompose, literal, next_power_of_2, node_comment,
                                             tl_dtype)
from memplan.backends.triton.pointwise import Body, translate
from memplan.ir.graph import Node, Value
from memplan.ir.regions import LOOP, Slicing, loop_spec

SDPA = "aten.scaled_dot_product_attention.default"
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
_SDPA_KWARGS = frozenset({*_SDPA_ARGS, "scale", "enable_gqa"})

# Block sizes: queries per program, keys per step of its loop (at most; at least 16, what tl.dot
# takes on a GPU, and no more than the next power of two of the lengths). The head dims are padded
# to a power of two (16 at least), masked; above MAX_HEAD a block of them no longer fits a program.
BLOCK_M = 64
BLOCK_N = 64
MIN_DOT = 16
MAX_HEAD = 256
INPUT_DTYPES = frozenset({"f32", "f16", "bf16"})

# body ops that only view the mask (the same elements, other dims): the kernel computes every value
# of the mask at score positions, so a view is its input's block
_VIEWS = frozenset({"aten.unsqueeze.default", "aten.expand.default", "aten.view.default", "aten._unsafe_view.default",
                    "aten.reshape.default", "aten.alias.default", "aten.squeeze.dim", "aten.squeeze.dims",
                    "aten.squeeze.default", "aten.permute.default"})
# ops between an ``arange`` and a loop input that keep its values in order along one dim
_POSITION_VIEWS = frozenset({"aten.unsqueeze.default", "aten.view.default", "aten._unsafe_view.default",
                             "aten.reshape.default", "aten.alias.default"})
_ARANGES = frozenset({"aten.arange.default", "aten.arange.start", "aten.arange.start_step"})
# fixed names of the kernel's own variables: a mask value never takes one
_WORDS = frozenset({"batch", "start_m", "start_n", "n_query_blocks", "n_queries", "n_keys", "n_visible", "head_dim",
                    "head_dim_v", "kv_group", "kv_head", "dq", "dq_mask", "dv", "dv_mask", "q", "kt", "v", "scale",
                    "scores", "m_i", "l_i", "acc", "m_new", "m_safe", "alpha", "p", "l_safe", "out",
                    "BLOCK_M", "BLOCK_N", "HEAD", "HEAD_V"})


def is_attention(node: Node) -> bool:
    """Whether ``node`` is a loop whose body computes attention (the ``attention`` pass's loops)."""
    return node.op == LOOP and node.subgraph is not None and any(m.op == SDPA for m in node.subgraph.nodes)


@dataclass
class _Leaf:
    """A loop input the mask is computed from: its body value, the loop's argument, its slicing, and
    the score dim each of its dims stands for (None: it has extent 1 there)."""

    inner: Value
    outer: Value
    slicing: Slicing
    dims: tuple


@dataclass
class _AttentionLoop:
    """An attention loop read in SDPA's terms (``rank``: q's rank, the scores' too: batch dims, then
    queries, then keys; the output's dims are SDPA's permuted by ``order``)."""

    node: Node
    sdpa: Node
    q: Value
    k: Value
    v: Value
    mask: Value | None  # the body value SDPA adds (float) or keeps by (bool)
    chain: list[Node]  # the body nodes computing it, in order
    leaves: list[_Leaf]
    dims: dict[str, tuple]  # body value name -> score dim of each of its dims
    order: list[int]
    scale: float
    gqa: bool
    rows: int  # queries per trip
    n_queries: int  # queries of all trips

    @property
    def rank(self) -> int:
        return self.q.type.rank


def _shape(v: Value) -> tuple[int, ...]:
    return tuple(int(d) for d in v.type.shape)


def read_loop(node: Node) -> _AttentionLoop:
    """The attention of loop ``node``; :class:`NotTranslatable` where the body is not one SDPA on a
    query block (after its mask's ops, before a permute of its rows) that the kernel computes exactly."""
    body, spec = node.subgraph, loop_spec(node)
    if any(not v.type.is_static for v in [*node.args, *node.outputs]):
        raise NotTranslatable("symbolic shapes")
    sdpas = [m for m in body.nodes if m.op == SDPA]
    if len(sdpas) != 1:
        raise NotTranslatable(f"its body holds {len(sdpas)} attentions")
    (sdpa,) = sdpas
    bound = dict(zip(_SDPA_ARGS, sdpa.args))
    bound.update(sdpa.kwargs)
    if set(bound) - _SDPA_KWARGS:
        raise NotTranslatable(f"attention with argument {comment_text(sorted(set(bound) - _SDPA_KWARGS)[0])}")
    if float(bound.get("dropout_p") or 0.0) != 0.0:
        raise NotTranslatable("attention with dropout")
    if bound.get("is_causal"):
        raise NotTranslatable("is_causal inside a loop body (each trip would mask from its own first row)")
    scale = bound.get("scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise NotTranslatable("a scale that is not a number")
    inputs = list(body.inputs)
    position = {}
    for role in ("query", "key", "value"):
        x = bound.get(role)
        found = [i for i, b in enumerate(inputs) if b is x]
        if not found:
            raise NotTranslatable(f"its {role} is computed in the body, not a loop input")
        position[role] = found[0]
    q, k, v = (node.args[position[r]] for r in ("query", "key", "value"))
    rank = q.type.rank
    if rank < 2 or k.type.rank != rank or v.type.rank != rank:
        raise NotTranslatable("query, key and value of different ranks, or below 2")
    dtypes = {q.type.dtype, k.type.dtype, v.type.dtype, node.outputs[0].type.dtype}
    if len(dtypes) != 1 or not dtypes <= INPUT_DTYPES:
        raise NotTranslatable(f"attention over {'/'.join(sorted(dtypes))} (the kernel takes f32, f16 or bf16)")
    qs, ks, vs = _shape(q), _shape(k), _shape(v)
    if 0 in qs or 0 in ks or 0 in vs:
        raise NotTranslatable("an attention with no queries, keys or values")
    if ks[-1] != qs[-1] or vs[-2] != ks[-2]:
        raise NotTranslatable(f"q {list(qs)}, k {list(ks)}, v {list(vs)} do not make an attention")
    gqa = bool(bound.get("enable_gqa", False))
    for d in range(rank - 2):
        for x in (ks[d], vs[d]):
            if x not in (1, qs[d]) and not (gqa and d == rank - 3 and qs[d] % x == 0):
                raise NotTranslatable(f"key/value batch dims {list(ks[:-2])} that do not broadcast to the query's")
    if gqa and rank >= 3 and ks[rank - 3] != vs[rank - 3]:
        raise NotTranslatable("grouped-query attention with key and value of different head counts")

    # the query is tiled by the loop, key and value read whole; the output gathers the query blocks
    s_q = spec.inputs[position["query"]]
    rows = int(bound["query"].type.shape[-2])
    if s_q.kind != "slice" or s_q.dim % rank != rank - 2 or not s_q.step == s_q.size == rows:
        raise NotTranslatable("the query is not tiled by blocks of rows")
    if any(spec.inputs[position[r]].kind != "full" for r in ("key", "value")):
        raise NotTranslatable("key or value is tiled")
    order = _order(body, sdpa)
    (combine,) = spec.outputs
    if combine.kind != "concat" or combine.dim % rank != order.index(rank - 2):
        raise NotTranslatable("its output does not gather the query blocks")
    n_queries = spec.trips * rows

    # the mask: the body nodes before SDPA, and the loop inputs they read
    mask = bound.get("attn_mask")
    if mask is not None and not isinstance(mask, Value):
        raise NotTranslatable("a mask that is not a tensor")
    chain = body.nodes[: body.nodes.index(sdpa)]
    score_shape = (*qs[:-2], rows, ks[-2])
    dims = _score_dims(chain, mask, score_shape) if mask is not None else {}
    if any(inputs[i].name in dims for i in position.values()):
        raise NotTranslatable("its mask is computed from the query, key or value")
    leaves = []
    for i, (inner, outer, slicing) in enumerate(zip(inputs, node.args, spec.inputs)):
        if i in position.values() or inner.name not in dims:
            continue
        leaf_dims = list(dims[inner.name])
        if slicing.kind == "slice":
            d = slicing.dim % inner.type.rank
            if leaf_dims[d] not in (None, rank - 2) or slicing.step != slicing.size or slicing.size != rows:
                raise NotTranslatable(f"mask input %{comment_text(inner.name)} is not tiled with the queries")
            leaf_dims[d] = rank - 2  # its query dim, even where a block has one row
        elif rank - 2 in leaf_dims and rows != n_queries:
            raise NotTranslatable(f"mask input %{comment_text(inner.name)} is read whole along the queries on "
                                  "every trip")
        leaves.append(_Leaf(inner, outer, slicing, tuple(leaf_dims)))
    if node.reuses is not None:
        _check_in_place(node, q, leaves, order)
    return _AttentionLoop(node, sdpa, q, k, v, mask, chain, leaves, dims, order,
                          float(scale) if scale is not None else 1.0 / math.sqrt(qs[-1]), gqa, rows, n_queries)


def _order(body, sdpa: Node) -> list[int]:
    """The permutation the body applies to SDPA's block before returning it (identity: none)."""
    result = sdpa.outputs[0]
    rank = result.type.rank
    if len(body.outputs) != 1:
        raise NotTranslatable(f"its body returns {len(body.outputs)} values")
    after = body.nodes[body.nodes.index(sdpa) + 1:]
    (out,) = body.outputs
    if out is result and not after:
        return list(range(rank))
    if (len(after) == 1 and after[0].op == "aten.permute.default" and after[0].inputs[0] is result
            and after[0].outputs[0] is out):
        order = [int(d) % rank for d in after[0].args[1]]
        if sorted(order) == list(range(rank)):
            return order
    raise NotTranslatable("its body does more after the attention than lay its rows out")


def _aligned(shape: tuple, out_dims: tuple) -> tuple:
    """Broadcasting: the score dims of an operand of ``shape`` read by a result whose dims are ``out_dims``."""
    lead = len(out_dims) - len(shape)
    if lead < 0:
        raise NotTranslatable("a mask operand of more dims than its result")
    return tuple(None if e == 1 else out_dims[k + lead] for k, e in enumerate(shape))


def _input_dims(node: Node, u: Value, out_dims: tuple) -> tuple:
    """The score dims of input ``u`` of mask op ``node`` whose result's are ``out_dims``."""
    shape, out_shape = _shape(u), _shape(node.outputs[0])
    if node.op == "aten.unsqueeze.default":
        d = node.args[1] % len(out_shape)
        return _aligned(shape, out_dims[:d] + out_dims[d + 1:])
    if node.op == "aten.permute.default":
        perm = [int(p) % len(out_shape) for p in node.args[1]]
        found = [None] * len(shape)
        for i, p in enumerate(perm):
            found[p] = out_dims[i]
        return _aligned(shape, tuple(found))
    if node.op in _VIEWS and node.op != "aten.expand.default":  # views that add or drop unit dims only
        spans = [k for k, e in enumerate(shape) if e != 1]
        out_spans = [k for k, e in enumerate(out_shape) if e != 1]
        if [shape[k] for k in spans] != [out_shape[k] for k in out_spans]:
            raise NotTranslatable(f"{comment_text(node.op)} reshapes the mask (node {comment_text(node.name)})")
        found = [None] * len(shape)
        for k, o in zip(spans, out_spans):
            found[k] = out_dims[o]
        return tuple(found)
    return _aligned(shape, out_dims)  # elementwise and expand: trailing dims align


def _score_dims(chain: list[Node], mask: Value, score_shape: tuple) -> dict[str, tuple]:
    """Walking back from the mask: the score dim of every dim of every value it is computed from
    (None where the value has extent 1: broadcast)."""
    rank = len(score_shape)
    dims = {mask.name: _aligned(_shape(mask), tuple(range(rank)))}
    for node in reversed(chain):
        if len(node.outputs) != 1 or node.outputs[0].name not in dims:
            raise NotTranslatable(f"body node {comment_text(node.name)} computes something the attention does "
                                  "not read")
        out_dims = dims[node.outputs[0].name]
        for u in dict.fromkeys(a for a in [*node.args, *node.kwargs.values()] if isinstance(a, Value)):
            found = _input_dims(node, u, out_dims)
            if dims.setdefault(u.name, found) != found:
                raise NotTranslatable(f"%{comment_text(u.name)} is read at two different score positions")
    return dims


def _check_in_place(node: Node, q: Value, leaves: list[_Leaf], order: list[int]) -> None:
    """The output may be written over an input only where each element is read by the program that
    writes it, before it writes it: q, or a mask input at the same score positions as the output."""
    if sum(a is node.reuses for a in node.args) > 1:
        raise NotTranslatable(f"its output is written over %{comment_text(node.reuses.name)}, which it also reads "
                              "whole")
    if node.reuses is q:
        return
    for leaf in leaves:
        if leaf.outer is node.reuses and all(d in (None, order[k]) for k, d in enumerate(leaf.dims)):
            return
    raise NotTranslatable(f"its output is written over %{comment_text(node.reuses.name)}, which other programs read")


def _arange_positions(v: Value) -> bool:
    """Whether loop input ``v`` holds ``0, 1, ..., n - 1`` along its one dim of extent n > 1: an
    ``arange(0, n)`` (integer), through views that only add unit dims."""
    shape = _shape(v)
    if v.type.dtype not in ("i64", "i32") or sum(e != 1 for e in shape) != 1:
        return False
    n = math.prod(shape)
    while v.producer is not None and v.producer.op in _POSITION_VIEWS:
        v = v.producer.inputs[0]
    node = v.producer
    if node is None or node.op not in _ARANGES or _shape(v) != (n,):
        return False
    args = list(node.args)
    if node.op == "aten.arange.default":
        args = [0, *args]
    start, step = args[0], args[2] if len(args) > 2 else 1
    return start == 0 and step == 1 and isinstance(start, int) and not isinstance(start, bool)


class _Writer(KernelArgs):
    """The kernel being written: names, launch arguments, and the index of each score dim."""

    def __init__(self, site: _AttentionLoop, canonical: bool):
        super().__init__(KernelNames(canonical))
        self.site = site
        self.names.used |= _WORDS
        rank = site.rank
        qs = _shape(site.q)
        self.batch_dims = [d for d in range(rank - 2) if qs[d] != 1]
        self.size = {d: self.names.unique(f"size{d}") for d in self.batch_dims[1:]}
        self.idx = {d: self.names.unique(f"i{d}") for d in self.batch_dims}

    def score_index(self, d: int) -> str:
        """The index of score dim ``d`` as a block broadcast over (queries, keys)."""
        rank = self.site.rank
        if d == rank - 2:
            return "rows[:, None]"
        if d == rank - 1:
            return "cols[None, :]"
        return self.idx[d]

    def batch_terms(self, v: Value, kv: bool = False) -> list[tuple[str, int]]:
        """Address terms of the batch dims of q, k or v (``kv``: GQA maps the head dim)."""
        shape, qs = _shape(v), _shape(self.site.q)
        terms = []
        for d in self.batch_dims:
            if shape[d] == qs[d]:
                terms.append((self.idx[d], d))
            elif kv and shape[d] != 1:  # grouped-query: query head h reads head h // group
                terms.append(("kv_head", d))
        return terms


def attention_kernel(node: Node, name: str, canonical: bool = False) -> Kernel:
    """The FlashAttention kernel of attention loop ``node`` named ``name``; :class:`NotTranslatable`
    says why not. ``canonical``: mask values named by position (the text that says whether two loops
    share a kernel)."""
    site = read_loop(node)
    w = _Writer(site, canonical)
    rank, qs, ks, vs = site.rank, _shape(site.q), _shape(site.k), _shape(site.v)
    out = node.outputs[0]
    n_keys, head_dim, head_dim_v = ks[-2], qs[-1], vs[-1]
    head, head_v = max(MIN_DOT, next_power_of_2(head_dim)), max(MIN_DOT, next_power_of_2(head_dim_v))
    if max(head, head_v) > MAX_HEAD:
        raise NotTranslatable(f"a head dim of {max(head_dim, head_dim_v)}, above the {MAX_HEAD} a program holds")
    block_m = min(BLOCK_M, max(MIN_DOT, next_power_of_2(site.n_queries)))
    block_n = min(BLOCK_N, max(MIN_DOT, next_power_of_2(n_keys)))
    batches = math.prod(qs[d] for d in w.batch_dims)
    n_query_blocks = -(-site.n_queries // block_m)
    gqa_dim = None  # the head dim, where query heads share key/value heads
    if site.gqa and rank - 3 in w.batch_dims and ks[rank - 3] not in (1, qs[rank - 3]):
        gqa_dim = rank - 3

    # the program's (batch, head) and query block
    lines = ["pid = tl.program_id(0)",
             "batch = pid // n_query_blocks  # the flattened batch and head dims",
             "start_m = (pid % n_query_blocks) * BLOCK_M",
             *decompose("batch", w.batch_dims, w.size, w.idx)]
    if gqa_dim is not None:
        lines.append(f"kv_head = {w.idx[gqa_dim]} // kv_group  # grouped-query attention: the head's key/value head")
    lines += ["rows = start_m + tl.arange(0, BLOCK_M)  # the queries of this program",
              "row_mask = rows < n_queries",
              "dq = tl.arange(0, HEAD)  # q and k's head dim, padded to a power of two",
              "dq_mask = dq < head_dim",
              "dv = tl.arange(0, HEAD_V)  # v's head dim",
              "dv_mask = dv < head_dim_v"]
    q_at = w.address(site.q, "q", w.batch_terms(site.q) + [("rows[:, None]", rank - 2), ("dq[None, :]", rank - 1)])
    k_at = w.address(site.k, "k", w.batch_terms(site.k, kv=True) + [("cols[None, :]", rank - 2),
                                                                     ("dq[:, None]", rank - 1)])
    v_at = w.address(site.v, "v", w.batch_terms(site.v, kv=True) + [("cols[:, None]", rank - 2),
                                                                     ("dv[None, :]", rank - 1)])
    lines += [f"q = tl.load({q_at}, mask=row_mask[:, None] & dq_mask[None, :], other=0.0).to(tl.float32)",
              f"scale = {literal(site.scale)}"]

    # the mask's computation: what does not depend on the key before the key loop, the rest inside
    hoisted, per_block, mask, causal, helpers = _mask_code(site, w)
    lines += hoisted
    lines += ["m_i = tl.full([BLOCK_M], -float(\"inf\"), tl.float32)  # the running max of each row's scores",
              "l_i = tl.zeros([BLOCK_M], tl.float32)  # the running sum of exp(score - m_i)",
              "acc = tl.zeros([BLOCK_M, HEAD_V], tl.float32)  # the running sum of exp(score - m_i) * v"]
    if causal:
        lines += ["# causal: the keys after this block's last query are masked for all its rows",
                  "n_visible = tl.minimum(n_keys, start_m + BLOCK_M)",
                  "for start_n in range(0, n_visible, BLOCK_N):"]
    else:
        lines.append("for start_n in range(0, n_keys, BLOCK_N):")
    loop = ["cols = start_n + tl.arange(0, BLOCK_N)  # the keys of this step",
            "col_mask = cols < n_keys",
            f"kt = tl.load({k_at}, mask=dq_mask[:, None] & col_mask[None, :], other=0.0).to(tl.float32)",
            "scores = tl.dot(q, kt, input_precision=\"ieee\") * scale",
            *per_block]
    if mask is not None:
        local, dtype = mask
        if dtype == "bool":
            loop.append(f"scores = tl.where({local}, scores, -float(\"inf\"))  # a bool mask keeps where True")
        else:
            loop.append(f"scores = scores + {local}" + ("" if dtype == "f32" else ".to(tl.float32)"))
    loop += ["scores = tl.where(col_mask[None, :], scores, -float(\"inf\"))",
             "m_new = tl.maximum(m_i, tl.max(scores, axis=1))",
             "# a row with no key kept yet has max -inf: subtract 0 instead, so that exp gives 0, not nan",
             "m_safe = tl.where(m_new == -float(\"inf\"), 0.0, m_new)",
             "alpha = tl.exp(m_i - m_safe)  # rescales what was summed under the old max",
             "p = tl.exp(scores - m_safe[:, None])",
             "l_i = l_i * alpha + tl.sum(p, axis=1)",
             f"v = tl.load({v_at}, mask=col_mask[:, None] & dv_mask[None, :], other=0.0).to(tl.float32)",
             "acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=\"ieee\")",
             "m_i = m_new"]
    lines += ["    " + line for line in loop]

    # the rows, into the loop's output through its planned strides (SDPA's dims permuted by the body)
    out_terms = []
    for k, d in enumerate(site.order):
        if d in w.batch_dims:
            out_terms.append((w.idx[d], k))
        elif d == rank - 2:
            out_terms.append(("rows[:, None]", k))
        elif d == rank - 1:
            out_terms.append(("dv[None, :]", k))
    out_at = w.address(out, "out", out_terms)
    result = "out" if out.type.dtype == "f32" else f"out.to({tl_dtype(out.type.dtype)})"
    lines += ["# a row whose every key is masked is 0, as aten's attention gives",
              "l_safe = tl.where(l_i == 0.0, 1.0, l_i)",
              "out = acc / l_safe[:, None]",
              f"tl.store({out_at}, {result}, mask=row_mask[:, None] & dv_mask[None, :])"]

    sizes = [*w.size.values(), "n_queries", "n_keys", "n_query_blocks", "head_dim", "head_dim_v"]
    size_args = [Arg("int", n=qs[d]) for d in w.size] + [Arg("int", n=n) for n in (site.n_queries, n_keys,
                                                                                    n_query_blocks, head_dim,
                                                                                    head_dim_v)]
    if gqa_dim is not None:
        sizes.append("kv_group")
        size_args.append(Arg("int", n=qs[gqa_dim] // ks[gqa_dim]))
    params = [", ".join(w.pointers), ", ".join(w.strides), ", ".join(sizes),
              "BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD: tl.constexpr, HEAD_V: tl.constexpr"]
    args = [w.tensors, w.stride_args, size_args,
            [Arg("const", name="BLOCK_M", n=block_m), Arg("const", name="BLOCK_N", n=block_n),
             Arg("const", name="HEAD", n=head), Arg("const", name="HEAD_V", n=head_v)]]
    summary = f"memplan.loop %{node.name} as one FlashAttention launch ({loop_spec(node).trips} trips on the CPU)"
    shapes = (f"{out.type.dtype} q{list(qs)} k{list(ks)} v{list(vs)}: {batches * n_query_blocks} programs of "
              f"{block_m} queries, {block_n} keys per step")
    if gqa_dim is not None:
        shapes += f", {qs[gqa_dim] // ks[gqa_dim]} query heads per key/value head"
    if causal:
        shapes += "; causal: the key blocks after a program's last query are skipped"
    covers = comment_lines(shapes)
    if node.reuses is not None:
        covers += comment_lines(f"in place: %{out.name} is written over %{node.reuses.name}, each row after its "
                                "program read it")
    covers += [line for m in node.subgraph.nodes for line in node_comment(m)]
    return Kernel(name, node, params, lines, batches * n_query_blocks, args, summary, covers, helpers)


def _mask_code(site: _AttentionLoop, w: _Writer):
    """(the lines computing the mask's values that do not depend on the key, those that do, the mask's
    (local, dtype) or None, whether it is causal in index positions, the helpers the lines call)."""
    if site.mask is None:
        return [], [], None, False, set()
    rank = site.rank
    body = Body(w.names)
    positions: dict[str, int] = {}  # value name -> the score dim whose index it holds
    hoisted: list[str] = []
    per_block: list[str] = []

    # what varies along the keys (computed per key block): what a leaf spanning the keys flows into
    keyed = {leaf.inner.name: rank - 1 in leaf.dims for leaf in site.leaves}
    for m in site.chain:
        keyed[m.outputs[0].name] = any(keyed.get(u.name, False) for u in m.inputs)
    for leaf in site.leaves:
        local = w.names(leaf.inner)
        tl_dtype(leaf.inner.type.dtype)
        lines = per_block if rank - 1 in leaf.dims else hoisted
        spans = [(k, d) for k, d in enumerate(leaf.dims) if d is not None]
        if _arange_positions(leaf.outer) and len(spans) == 1:
            ((_, d),) = spans
            positions[leaf.inner.name] = d
            what = {rank - 2: "query", rank - 1: "key"}.get(d, f"dim {d}")
            lines.append(f"{local} = {w.score_index(d)}  # positions 0, 1, ...: the {what} index itself, not read")
            body.env[leaf.inner.name] = (local, "i32")
            continue
        where = w.address(leaf.outer, local, [(w.score_index(d), k) for k, d in spans])
        guards = [g for d, g in ((rank - 2, "row_mask[:, None]"), (rank - 1, "col_mask[None, :]")) if d in leaf.dims]
        guard = f", mask={' & '.join(guards)}, other=0" if guards else ""
        lines.append(f"{local} = tl.load({where}{guard})")
        body.env[leaf.inner.name] = (local, leaf.inner.type.dtype)
    for part, lines in ((False, hoisted), (True, per_block)):
        body.lines = lines
        for m in site.chain:
            out = m.outputs[0]
            if keyed[out.name] != part:
                continue
            if m.op in _VIEWS:  # the same values at the same score positions
                body.env[out.name] = body.env[m.inputs[0].name]
                if m.inputs[0].name in positions:
                    positions[out.name] = positions[m.inputs[0].name]
                continue
            expr = translate(m, body)
            local = w.names(out)
            lines.append(f"{local} = {expr}  # {comment_text(m.op)}")
            body.env[out.name] = (local, out.type.dtype)
    causal = _causal(site.mask, positions, rank)
    return hoisted, per_block, body.env[site.mask.name], causal, body.helpers


def _causal(v: Value, positions: dict[str, int], rank: int) -> bool:
    """Whether mask value ``v`` masks (False, -inf) every key position after the query position, by
    the positions' indices: ``key <= query`` and what keeps its masked entries masked."""
    node = v.producer
    if node is None:
        return False
    args = node.args
    if node.op in _VIEWS:
        return _causal(node.inputs[0], positions, rank)
    if node.op in ("aten.le.Tensor", "aten.ge.Tensor") and all(isinstance(a, Value) for a in args[:2]):
        key, query = args[:2] if node.op == "aten.le.Tensor" else args[1::-1]
        return positions.get(key.name) == rank - 1 and positions.get(query.name) == rank - 2
    if node.op in ("aten.bitwise_and.Tensor", "aten.logical_and.default"):
        return any(isinstance(a, Value) and _causal(a, positions, rank) for a in args[:2])
    if node.op in ("aten.where.Scalar", "aten.where.ScalarOther", "aten.where.self") and len(args) == 3:
        return (isinstance(args[0], Value) and not isinstance(args[2], Value) and args[2] == -math.inf
                and _causal(args[0], positions, rank))
    if node.op == "aten.add.Tensor" and not node.kwargs:  # -inf plus a finite bias stays -inf
        return any(isinstance(a, Value) and _causal(a, positions, rank) for a in args[:2])
    return False
