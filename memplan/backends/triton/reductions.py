"""Row-reduction templates: softmax and log-softmax, layer norm, sum and mean, each one kernel.

A row is every element that one output element (or one normalised slice) depends on: the reduced
dims of the input, in row-major order; the other dims enumerate the rows. Each program holds
``ROWS`` whole rows in registers (``BLOCK``, a power of two, columns each; masks cover the columns
past the row's end and the rows past the last), so a row is read once and its results are written
straight into their planned buffers: the kernel needs no scratch. Every tensor is addressed through
its own strides, so a permuted input or a strided slot costs no copy. Statistics accumulate in
float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import math

from memplan.backends.triton.codegen import (FLOATS, MAX_ROW, ROW_TILE, Arg, Kernel, KernelArgs, KernelNames,
                                             NotTranslatable, aligned_dims, comment_text, decompose, literal,
                                             next_power_of_2, node_comment, tl_dtype)
from memplan.ir.graph import Node, Value
from memplan.ir.regions import GROUP


def reduction_of(group: Node) -> Node | None:
    """The one row reduction in the body of ``memplan.group`` ``group`` (a row reduction after its
    elementwise prologue, a row statistic before its epilogue too:
    :mod:`memplan.passes.reduction_groups`), or None."""
    if group.op != GROUP or group.subgraph is None:
        return None
    found = [m for m in group.subgraph.nodes if m.op in REDUCTIONS]
    return found[0] if len(found) == 1 else None


def _reduction(node: Node) -> Node:
    """The reduction a kernel runs: ``node`` itself, or the one of a group's body (:func:`reduction_of`)."""
    if node.subgraph is None:
        return node
    red = reduction_of(node)
    if red is None:
        raise NotTranslatable("not a row reduction")
    return red


class _Rows(KernelArgs):
    """The row layout of one reduction: the input's shape split into row dims and reduced (column)
    dims, the kernel's names for their sizes and indices, and the launch arguments gathered.
    ``node`` is what the kernel runs: a reduction, or a group holding one after its prologue (then
    body values are read and written through the group's arguments and outputs)."""

    def __init__(self, node: Node, x: Value, reduced: list[int]):
        self.node, self.x = node, x
        body = node.subgraph
        self.outer_in = {b.name: a for a, b in zip(node.args, body.inputs)} if body is not None else None
        self.outer_out = {b.name: o for o, b in zip(node.outputs, body.outputs)} if body is not None else None
        self.helpers: set[str] = set()
        self.shape = tuple(int(d) for d in x.type.shape)
        if not self.shape or 0 in self.shape or math.prod(self.shape) == 1:
            raise NotTranslatable("a reduction of at most one element")
        if x.type.dtype not in FLOATS:
            raise NotTranslatable(f"a reduction of {x.type.dtype} values")
        self.reduced = sorted(set(reduced))
        self.row_dims = [d for d, e in enumerate(self.shape) if e != 1 and d not in self.reduced]
        self.col_dims = [d for d in self.reduced if self.shape[d] != 1]
        self.n_rows = math.prod(e for d, e in enumerate(self.shape) if d not in self.reduced)
        self.n_cols = math.prod(self.shape[d] for d in self.reduced)
        if self.n_cols > MAX_ROW:
            raise NotTranslatable(f"rows of {self.n_cols} elements, above the {MAX_ROW} one block holds")
        self.block = next_power_of_2(self.n_cols)
        self.rows_per_program = max(1, min(next_power_of_2(self.n_rows), ROW_TILE // self.block))
        super().__init__(KernelNames())
        n = self.names
        self.size = {d: n.unique(f"size{d}") for d in self.row_dims[1:] + self.col_dims[1:]}
        self.idx = {d: n.unique(f"i{d}") for d in self.row_dims}
        self.idx.update({d: n.unique(f"j{d}") for d in self.col_dims})
        self.indices = (decompose("rows", self.row_dims, self.size, self.idx)
                        + decompose("cols", self.col_dims, self.size, self.idx))
        self.dtype = "f64" if x.type.dtype == "f64" else "f32"  # the accumulation dtype
        self.index_checks: list[tuple[Value, int]] = []

    def tensor(self, v: Value, dims: dict[int, int], role: str) -> str:
        """Take ``v`` as a kernel argument named for its ``role`` (a pointer, and a stride per entry of
        ``dims``: dim of the input -> dim of ``v``); return the addresses of its block."""
        if self.outer_in is not None:  # a body value: the group's argument or output it stands for
            v = self.outer_in.get(v.name) or self.outer_out[v.name]
        where = self.address(v, role, [(self.idx[d], k, d) for d, k in dims.items()])
        # no dims: one row (n_rows == 1), addressed by the row index so the block keeps its shape
        return where if dims else f"{where} + rows"

    def kernel(self, name: str, summary: str, statements: list[str]) -> Kernel:
        """The kernel: row and column indices and masks, then ``statements``."""
        sizes = list(self.size.values())
        params = [", ".join(self.pointers), ", ".join(self.strides), ", ".join([*sizes, "n_rows", "n_cols"]),
                  "ROWS: tl.constexpr, BLOCK: tl.constexpr"]
        body = ["rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]",
                "cols = tl.arange(0, BLOCK)[None, :]",
                "row_mask = rows < n_rows",
                "col_mask = cols < n_cols",
                "mask = row_mask & col_mask",
                *self.indices, *(line for line in statements if line)]
        size_args = [Arg("int", n=self.shape[d]) for d in self.size]
        args = [self.tensors, self.stride_args, size_args + [Arg("int", n=self.n_rows), Arg("int", n=self.n_cols)],
                [Arg("const", name="ROWS", n=self.rows_per_program), Arg("const", name="BLOCK", n=self.block)]]
        programs = -(-self.n_rows // self.rows_per_program)
        if self.node.subgraph is not None:
            covers = [line for m in self.node.subgraph.nodes for line in node_comment(m)]
            summary += f"; %{comment_text(self.node.name)}'s elementwise prologue computed in registers"
        else:
            covers = node_comment(self.node)
        return Kernel(name, self.node, params, body, programs, args, summary, covers, self.helpers,
                      self.index_checks)

    def load_x(self) -> tuple[list[str], str]:
        """(the lines loading the input's rows in the accumulation dtype, the local holding them):
        loaded, or computed from the group's inputs by its prologue (whose results read outside the
        group are stored on the way)."""
        everywhere = {d: d for d in self.row_dims + self.col_dims}
        x = self.names.unique("x")
        if self.outer_in is None or self.x.name in self.outer_in:
            where = self.tensor(self.x, everywhere, "x")
            self.body = None
            return [f"{x} = tl.load({where}, mask=mask, other=0.0).to({tl_dtype(self.dtype)})"], x
        from memplan.backends.triton.pointwise import Body

        body = Body(self.names)
        self.body = body
        lines = []
        nodes = self.node.subgraph.nodes
        prologue = nodes[:nodes.index(_reduction(self.node))]
        gathers = [m for m in prologue if m.op == "aten.embedding.default"]
        for m in gathers:
            lines += self.gather(m, body)
        elementwise = [m for m in prologue if m not in gathers]
        lines += self.load_inputs(elementwise, body)
        for m in elementwise:
            body.compute(m)
        stores = [self.store(m.outputs[0], self.names(m.outputs[0]), body.local(m.outputs[0]), everywhere, "mask")
                  for m in prologue]
        self.helpers |= body.helpers
        lines += body.lines + [line for line in stores if line]
        lines.append(f"{x} = tl.where(mask, {body.local(self.x, self.dtype)}, 0.0)")
        return lines, x

    def load_inputs(self, members: list[Node], body) -> list[str]:
        """The lines loading the group inputs ``members`` read that ``body`` does not hold yet, each
        broadcast over the rows it spans (one element where it spans none)."""
        lines = []
        for b in dict.fromkeys(u for m in members for u in m.inputs if u.name in self.outer_in and u.name not in body.env):
            outer = self.outer_in[b.name]
            local = self.names(b)
            spans = aligned_dims(outer, self.shape, self.row_dims + self.col_dims)
            if spans:
                lines.append(f"{local} = tl.load({self.tensor(b, spans, local)}, mask=mask, other=0.0)")
            else:
                lines.append(f"{local} = tl.load({self.pointer(outer, local)})")
            body.env[b.name] = (local, b.type.dtype)
        return lines

    def gather(self, m: Node, body) -> list[str]:
        """The lines computing an ``aten.embedding`` member: each row's index loaded, the table row it
        names loaded (masked to the table: an index out of range reads nothing; the launcher checks
        the indices first, as eager's ``IndexError``)."""
        table, ids = m.args[0], m.args[1]
        if table.name not in self.outer_in or ids.name not in self.outer_in or len(self.col_dims) != 1 \
                or self.col_dims[0] != len(self.shape) - 1:
            raise NotTranslatable("an embedding whose table or indices are computed in the group")
        n = self.names
        local = n(m.outputs[0])
        index = n.unique(f"{local}_index")
        at = self.tensor(ids, {d: d for d in self.row_dims}, index)
        row = self.address(self.outer_in[table.name], f"{local}_table", [(index, 0), (self.idx[self.col_dims[0]], 1)])
        rows = int(table.type.shape[0])
        valid = n.unique(f"{local}_valid")
        body.env[m.outputs[0].name] = (local, m.outputs[0].type.dtype)
        self.index_checks.append((self.outer_in[ids.name], rows))
        return [f"{index} = tl.load({at}, mask=row_mask, other=0)  # {comment_text(m.op)}: one table row per row",
                f"{valid} = ({index} >= 0) & ({index} < {rows})",
                f"{local} = tl.load({row}, mask=mask & {valid}, other=0.0)"]

    def store(self, v: Value, role: str, value: str, dims: dict[int, int], mask: str) -> str:
        """The line storing ``value`` into ``v`` (dims: dim of the input -> dim of ``v``); nothing
        for a body value the group does not output."""
        if self.outer_out is not None and v.name not in self.outer_out:
            return ""
        target = self.outer_out[v.name] if self.outer_out is not None else v
        if target.type.dtype != v.type.dtype:
            raise NotTranslatable("a group output of another dtype than its body value")
        where = self.tensor(v, dims, role)
        if v.type.dtype != self.dtype:
            value = f"{value}.to({tl_dtype(v.type.dtype)})"
        return f"tl.store({where}, {value}, mask={mask})"


def _dim(node: Node, d, rank: int) -> int:
    if isinstance(d, bool) or not isinstance(d, int) or not -rank <= d < max(rank, 1):
        raise NotTranslatable(f"{comment_text(node.op)} over dim {comment_text(repr(d))}")
    return d % rank


def softmax_kernel(node: Node, name: str) -> Kernel:
    """``aten._softmax`` / ``aten._log_softmax`` (x, dim, half_to_float) over one dim of any layout."""
    red = _reduction(node)
    x, dim = red.args[0], red.args[1]
    rows = _Rows(node, x, [_dim(red, dim, x.type.rank)])
    (y,) = red.outputs
    n = rows.names
    load, xs = rows.load_x()
    x_max, y_local = n.unique("x_max"), n.unique("y")
    lines = [*load, f'{xs} = tl.where(col_mask, {xs}, -float("inf"))',
             f"{x_max} = tl.max({xs}, axis=1)[:, None]"]
    log = red.op.startswith("aten._log_softmax")
    if log:
        shifted = n.unique("shifted")
        lines += [f"{shifted} = {xs} - {x_max}",
                  f"{y_local} = {shifted} - tl.log(tl.sum(tl.exp({shifted}), axis=1)[:, None])"]
    else:
        numerator, denominator = n.unique("numerator"), n.unique("denominator")
        lines += [f"{numerator} = tl.exp({xs} - {x_max})",
                  f"{denominator} = tl.sum({numerator}, axis=1)[:, None]",
                  f"{y_local} = {numerator} / {denominator}"]
    lines.append(rows.store(y, "y", y_local, {d: d for d in rows.row_dims + rows.col_dims}, "mask"))
    kind = "log-softmax" if log else "softmax"
    summary = (f"{kind} over dim {rows.reduced[0]} of {x.type.dtype}{list(rows.shape)}: {rows.n_rows} rows of "
               f"{rows.n_cols}, {rows.rows_per_program} rows per program")
    return rows.kernel(name, summary, lines)


def layer_norm_kernel(node: Node, name: str) -> Kernel:
    """``aten.native_layer_norm`` (x, normalized_shape, weight, bias, eps): all three results
    (normalised output, mean, rstd)."""
    red = _reduction(node)
    x, normalized = red.args[0], red.args[1]
    weight = red.args[2] if len(red.args) > 2 else None
    bias = red.args[3] if len(red.args) > 3 else None
    eps = red.args[4] if len(red.args) > 4 else red.kwargs.get("eps", 1e-5)
    if not isinstance(normalized, (list, tuple)) or not 1 <= len(normalized) <= x.type.rank:
        raise NotTranslatable("layer norm over an unexpected normalized_shape")
    axis = x.type.rank - len(normalized)
    rows = _Rows(node, x, list(range(axis, x.type.rank)))
    y, mean, rstd = red.outputs
    n = rows.names
    load, xs = rows.load_x()
    m, centered, var, r, y_local = (n.unique(w) for w in ("mean", "centered", "var", "rstd", "y"))
    lines = [*load,
             f"{m} = tl.sum({xs}, axis=1)[:, None] / n_cols",
             f"{centered} = tl.where(col_mask, {xs} - {m}, 0.0)",
             f"{var} = tl.sum({centered} * {centered}, axis=1)[:, None] / n_cols",
             f"{r} = 1.0 / tl.sqrt({var} + {literal(float(eps))})",
             f"{y_local} = {centered} * {r}"]
    for v, symbol, what in ((weight, "*", "weight"), (bias, "+", "bias")):
        if v is None:
            continue
        if not isinstance(v, Value):
            raise NotTranslatable(f"layer norm {what} is not a tensor")
        where = rows.tensor(v, aligned_dims(v, rows.shape, rows.col_dims), what)
        local = n.unique(what)
        lines += [f"{local} = tl.load({where}, mask=col_mask, other=0.0).to({tl_dtype(rows.dtype)})",
                  f"{y_local} = {y_local} {symbol} {local}"]
    everywhere = {d: d for d in rows.row_dims + rows.col_dims}
    per_row = {d: d for d in rows.row_dims}
    lines += [rows.store(y, "y", y_local, everywhere, "mask"),
              rows.store(mean, "mean", m, per_row, "row_mask"),
              rows.store(rstd, "rstd", r, per_row, "row_mask")]
    summary = (f"layer norm over the last {len(normalized)} dims of {x.type.dtype}{list(rows.shape)}: "
               f"{rows.n_rows} rows of {rows.n_cols}, {rows.rows_per_program} rows per program")
    return rows.kernel(name, summary, lines)


def sum_kernel(node: Node, name: str) -> Kernel:
    """``aten.sum.dim_IntList`` / ``aten.mean.dim`` (x, dims, keepdim=False, dtype=None)."""
    x = node.args[0]
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    rank = x.type.rank
    reduced = list(range(rank)) if not dims else [_dim(node, d, rank) for d in dims]
    rows = _Rows(node, x, reduced)
    (y,) = node.outputs
    if y.type.dtype not in FLOATS:
        raise NotTranslatable(f"a sum into {y.type.dtype}")
    n = rows.names
    load, xs = rows.load_x()
    total = n.unique("total")
    mean = node.op.startswith("aten.mean")
    lines = [*load, f"{total} = tl.sum({xs}, axis=1)[:, None]" + (" / n_cols" if mean else "")]
    kept = [d for d in range(rank) if d not in rows.reduced]
    out_dim = {d: (d if keepdim else kept.index(d)) for d in rows.row_dims}
    lines.append(rows.store(y, "y", total, out_dim, "row_mask"))
    summary = (f"{'mean' if mean else 'sum'} over dims {rows.reduced} of {x.type.dtype}{list(rows.shape)}: "
               f"{rows.n_rows} rows of {rows.n_cols}, {rows.rows_per_program} rows per program")
    return rows.kernel(name, summary, lines)


def statistic_kernel(node: Node, name: str) -> Kernel:
    """A ``memplan.group`` of a row statistic (``mean``/``sum`` over the last dim, kept) between its
    elementwise prologue and epilogue (RMS norm: ``x * rsqrt(mean(x ** 2) + eps) * weight``, with the
    residual add before it): the rows loaded once, the statistic and everything computed from it in
    registers, each group output stored (rows, or one value per row)."""
    from memplan.backends.triton.pointwise import Body

    red = _reduction(node)
    x = red.args[0]
    rows = _Rows(node, x, [x.type.rank - 1])
    n = rows.names
    load, xs = rows.load_x()
    body = rows.body
    if body is None:  # no prologue: the statistic reads a group input, which the epilogue may read too
        body = Body(n)
        body.env[x.name] = (xs, rows.dtype)
    stat = n(red.outputs[0])
    lines = [*load, f"{stat} = tl.sum({xs}, axis=1)[:, None]" + (" / n_cols" if red.op.startswith("aten.mean") else "")
             + f"  # {comment_text(red.op)}"]
    body.env[red.outputs[0].name] = (stat, rows.dtype)
    nodes = node.subgraph.nodes
    epilogue = nodes[nodes.index(red) + 1:]
    everywhere = {d: d for d in rows.row_dims + rows.col_dims}
    lines += rows.load_inputs(epilogue, body)
    start = len(body.lines)  # the prologue's statements are in ``load`` already
    for m in epilogue:
        body.compute(m)
    lines += body.lines[start:]
    rows.helpers |= body.helpers
    per_row = {d: d for d in rows.row_dims}
    for m in [red, *epilogue]:
        v = m.outputs[0]
        full = tuple(int(d) for d in v.type.shape) == rows.shape
        lines.append(rows.store(v, n.unique(f"{n(v)}_out"), body.local(v), everywhere if full else per_row,
                                "mask" if full else "row_mask"))
    summary = (f"{'mean' if red.op.startswith('aten.mean') else 'sum'} over the last dim of {x.type.dtype}"
               f"{list(rows.shape)} with its epilogue in registers: {rows.n_rows} rows of {rows.n_cols}, "
               f"{rows.rows_per_program} rows per program")
    return rows.kernel(name, summary, lines)


def group_reduction_kernel(node: Node, name: str) -> Kernel:
    """A ``memplan.group`` of a row reduction after its elementwise prologue (a row statistic before
    its epilogue too), as one kernel."""
    red = _reduction(node)
    template = REDUCTIONS.get(red.op)
    if template is sum_kernel:
        return statistic_kernel(node, name)
    if template is None or node.subgraph.nodes[-1] is not red:
        raise NotTranslatable("a region that is neither elementwise nor a row reduction after its prologue")
    return template(node, name)


# aten op -> its row-reduction template
REDUCTIONS = {
    "aten._softmax.default": softmax_kernel,
    "aten._log_softmax.default": softmax_kernel,
    "aten.native_layer_norm.default": layer_norm_kernel,
    "aten.sum.dim_IntList": sum_kernel,
    "aten.mean.dim": sum_kernel,
}
