"""The matmul template: a matrix product with its elementwise epilogue as one Triton kernel.

A ``memplan.group`` of :mod:`memplan.passes.matmul_groups` holds ``aten.mm`` or ``aten.addmm`` of
``a [M, K]`` and ``b [K, N]``, views of the product as ``[*lead, N]`` (the rows split), and the
elementwise ops of that shape that read it (bias, activation, residual add, a gate's product).
Each program computes one ``BLOCK_M x BLOCK_N`` tile of the product: it walks K in ``BLOCK_K``
steps, loading tiles of ``a`` and ``b`` through their strides (a transposed weight costs no copy)
and accumulating ``tl.dot`` in float32 (IEEE products: no TF32 on a GPU, so the result is float32
exact to rounding), then runs the epilogue on the tile in registers (the pointwise template's
translations; a row index is split into the ``lead`` dims to address ``[*lead, N]`` inputs) and
stores the group's outputs through their planned strides. The product takes no memory of its own
unless it is a group output itself.
"""
from __future__ import annotations

import math

from memplan.backends.triton.codegen import (Arg, Kernel, KernelArgs, KernelNames, NotTranslatable, aligned_dims,
                                             comment_text, decompose, literal, next_power_of_2, node_comment,
                                             tl_dtype)
from memplan.ir.graph import Node, Value
from memplan.ir.ops import lookup

MATMULS = ("aten.mm.default", "aten.addmm.default")
BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 32


def is_matmul_group(node: Node) -> bool:
    """Is ``node`` a ``memplan.group`` whose body starts with a matrix product and holds an epilogue
    (:mod:`memplan.passes.matmul_groups` makes them)?"""
    body = node.subgraph
    return node.op == "memplan.group" and body is not None and bool(body.nodes) and body.nodes[0].op in MATMULS \
        and any(not lookup(m.op, node=m.name).view for m in body.nodes[1:])


def _block(extent: int, most: int) -> int:
    """A power-of-two block: at least 16 (``tl.dot``'s least), at most ``most``, no larger than needed."""
    return max(16, min(most, next_power_of_2(extent)))


def matmul_kernel(node: Node, name: str, canonical: bool = False) -> Kernel:
    """The kernel of a matmul group ``node`` named ``name``; :class:`NotTranslatable` says why not."""
    from memplan.backends.triton.pointwise import Body

    body = node.subgraph
    if node.op != "memplan.group" or body is None or not body.nodes or body.nodes[0].op not in MATMULS:
        raise NotTranslatable("not a matrix product with its epilogue")
    mm = body.nodes[0]
    if mm.op == "aten.mm.default":
        a, b, bias = mm.args[0], mm.args[1], None
    else:
        bias, a, b = mm.args[0], mm.args[1], mm.args[2]
    beta, alpha = mm.kwargs.get("beta", 1), mm.kwargs.get("alpha", 1)
    outer = {inner.name: o for o, inner in zip(node.args, body.inputs)}
    outer_out = {inner.name: o for o, inner in zip(node.outputs, body.outputs)}
    for v in (a, b, bias):
        if isinstance(v, Value) and v.name not in outer:
            raise NotTranslatable("an operand of the product is computed inside the group")
    dtype = mm.outputs[0].type.dtype
    if dtype not in ("f32", "f16", "bf16"):
        raise NotTranslatable(f"a product of {dtype} values")
    (m, k), (k2, n) = (tuple(int(d) for d in v.type.shape) for v in (a, b))
    if k != k2 or 0 in (m, n, k):
        raise NotTranslatable("operands of mismatched or empty shapes")
    # the views of the product: the same [m, n] values with the rows split into lead dims
    product = {mm.outputs[0].name}
    epilogue = []
    shape = (m, n)
    for op in body.nodes[1:]:
        if lookup(op.op, node=op.name).view:
            if op.inputs[0].name not in product:
                raise NotTranslatable(f"a view of {comment_text(op.inputs[0].name)} inside the group")
            vshape = tuple(int(d) for d in op.outputs[0].type.shape)
            if not vshape or vshape[-1] != n or math.prod(vshape[:-1]) != m:
                raise NotTranslatable("a view of the product that does not split its rows")
            product.add(op.outputs[0].name)
            shape = vshape
        else:
            epilogue.append(op)
    names = KernelNames(canonical)
    rank = len(shape)
    lead = list(range(rank - 1))
    size = {d: names.unique(f"size{d}") for d in lead[1:]}
    idx = {d: names.unique(f"i{d}") for d in lead}
    idx[rank - 1] = "rn"
    indices = decompose("rm", lead, size, idx) if lead else []
    args = KernelArgs(names)

    bm, bn, bk = _block(m, BLOCK_M), _block(n, BLOCK_N), _block(k, BLOCK_K)
    a_at = args.address(outer[a.name], "a", [("rm", 0), ("rk[None, :]", 1)])
    b_at = args.address(outer[b.name], "b", [("rk[:, None]", 0), ("rn", 1)])
    precision = ', input_precision="ieee"' if dtype == "f32" else ""
    statements = [
        "pid = tl.program_id(0)",
        "rm = (pid // tl.cdiv(n_cols, BLOCK_N)) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]  # the tile's rows",
        "rn = (pid % tl.cdiv(n_cols, BLOCK_N)) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]  # and columns",
        "mask = (rm < n_rows) & (rn < n_cols)",
        "acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)",
        "for k0 in range(0, n_inner, BLOCK_K):",
        "    rk = k0 + tl.arange(0, BLOCK_K)",
        f"    a = tl.load({a_at}, mask=(rm < n_rows) & (rk[None, :] < n_inner), other=0.0)",
        f"    b = tl.load({b_at}, mask=(rk[:, None] < n_inner) & (rn < n_cols), other=0.0)",
        f"    acc += tl.dot(a, b{precision})",
    ]
    if alpha != 1:
        statements.append(f"acc = acc * {literal(float(alpha))}")
    if bias is not None and beta != 0:
        bias_outer = outer[bias.name]
        spans = aligned_dims(bias_outer, (m, n), [0, 1])
        where = args.address(bias_outer, "bias", [(("rm", "rn")[d], e) for d, e in spans.items()])
        scaled = "bias" if beta == 1 else f"{literal(float(beta))} * bias"
        mask = "mask" if 0 in spans else "rn < n_cols"
        statements += [f"bias = tl.load({where}, mask={mask}, other=0.0).to(tl.float32)",
                       f"acc = acc + {scaled}"]
    names.used |= {"pid", "rm", "rn", "rk", "k0", "acc", "a", "b", "bias", "n_rows", "n_cols", "n_inner",
                   "BLOCK_M", "BLOCK_N", "BLOCK_K"}
    statements += indices
    code = Body(names)
    result = "acc" if dtype == "f32" else code.let(f"acc.to({tl_dtype(dtype)})", "product")
    for v in product:
        code.env[v] = (result, dtype)
    all_dims = list(range(rank))
    for b_in in dict.fromkeys(u for op in epilogue for u in op.inputs if u.name in outer):
        local = names(b_in)
        spans = aligned_dims(outer[b_in.name], shape, all_dims)
        where = args.address(outer[b_in.name], local, [(idx[d], e) for d, e in spans.items()])
        code.lines.append(f"{local} = tl.load({where}, mask=mask)" if spans else f"{local} = tl.load({where})")
        code.env[b_in.name] = (local, b_in.type.dtype)
    for op in epilogue:
        code.compute(op)
    stores = []
    for inner_out in body.outputs:
        out = outer_out[inner_out.name]
        oshape = tuple(int(d) for d in out.type.shape)
        if oshape == shape:
            terms = [(idx[d], d) for d in all_dims]
        elif oshape == (m, n):
            terms = [("rm", 0), ("rn", 1)]
        else:
            raise NotTranslatable(f"group output %{comment_text(out.name)} of another shape than the tile")
        if out.type.dtype != inner_out.type.dtype:
            raise NotTranslatable("a group output of another dtype than its body value")
        where = args.address(out, names(out), terms)
        stores.append(f"tl.store({where}, {code.local(inner_out, out.type.dtype)}, mask=mask)")
    statements += code.lines + stores
    params = [", ".join(args.pointers), ", ".join(args.strides), ", ".join([*size.values(), "n_rows", "n_cols", "n_inner"]),
              "BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr"]
    sizes = [Arg("int", n=shape[d]) for d in lead[1:]] + [Arg("int", n=m), Arg("int", n=n), Arg("int", n=k)]
    launch = [args.tensors, args.stride_args, sizes,
              [Arg("const", name="BLOCK_M", n=bm), Arg("const", name="BLOCK_N", n=bn), Arg("const", name="BLOCK_K", n=bk)]]
    programs = -(-m // bm) * -(-n // bn)
    what = " + ".join(dict.fromkeys(op.op.split(".")[1] for op in epilogue))
    summary = (f"{mm.op.split('.')[1]} [{m}, {k}] x [{k}, {n}] of {dtype} with its epilogue ({what}) in registers, "
               f"{bm}x{bn} tiles")
    covers = [line for op in body.nodes for line in node_comment(op)]
    return Kernel(name, node, params, statements, programs, launch, summary, covers, code.helpers)
