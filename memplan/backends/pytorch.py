"""PyTorch backend: the planned IR printed as a readable Python module of aten calls.

The emitted function runs the nodes in their order, one statement per step,
each traced to its source op and module in a comment, writes into the slots
and buffers the IR allocates, and drops every value outside a storage at its
last use (``del``) so that no activation outlives its planned interval.

>>> import torch, memplan
>>> cm = memplan.compile(torch.nn.Linear(4, 2), (torch.randn(3, 4),))
>>> print(cm.source.splitlines()[0])
# memplan: graph 'Linear' on target 'cpu', 2 steps
"""
from __future__ import annotations

import builtins
import hashlib
import itertools
import keyword
import linecache

import torch


from memplan.backends.bindings import fast_binding
from memplan.ir.graph import OWN, SLOT, Graph, Value, iter_leaves
from memplan.backends.pytorch_kernels import out_variant
from memplan.ir.ops import _CUSTOM, lookup
from memplan.ir.types import DTYPES
from memplan.ir.printer import format_arguments
from memplan.ir.regions import GROUP, LOOP, REGION_OPS, loop_spec
from memplan.plan import Plan
from memplan.units import format_bytes

# every name the emitted module binds or reads besides the values: a value may never take one
_RESERVED = frozenset({"torch", "aten", "memplan_ops", "weights", "run", "inf", "nan", "fresh"}
                      | set(dir(builtins)) | set(keyword.kwlist) | set(getattr(keyword, "softkwlist", ())))
_counter = itertools.count()
_COMMENT_LIMIT = 160


def comment_text(text) -> str:
    """``text`` made safe for a ``#`` comment of emitted code: printable ASCII only (every other
    character, line breaks included, becomes ``?``), at most ``_COMMENT_LIMIT`` characters. Names
    and provenance come from a user's file; nothing from it may end a comment line."""
    text = str(text)
    clean = "".join(c if " " <= c <= "~" else "?" for c in text[:_COMMENT_LIMIT])
    return clean + ("..." if len(text) > _COMMENT_LIMIT else "")


def identifier(text: str) -> str:
    """An ASCII Python identifier derived from ``text`` (not yet checked against reserved names)."""
    base = "".join(c if (c.isascii() and (c.isalnum() or c == "_")) else "_" for c in text)[:64]
    if not base or base[0].isdigit():
        base = "v_" + base
    return base


def _returns_sequence(opdef) -> bool:
    schema = getattr(opdef.impl, "_schema", None)
    if schema is None:
        return getattr(opdef.impl, "returns_sequence", False)
    return len(schema.returns) != 1 or str(schema.returns[0].type).startswith(("List", "Tensor[]"))


class _Names:
    """IR value names -> Python identifiers (stable, collision free)."""

    def __init__(self):
        self.map: dict[str, str] = {}
        self.used: set[str] = set(_RESERVED)
        self.next: dict[str, int] = {}

    def __call__(self, v: Value) -> str:
        if v.name not in self.map:
            base = identifier(v.name)
            if base in _RESERVED or base.startswith(("__", "storage_", "region_", "trip_")) or base == "t":
                base = "v_" + base
            self.map[v.name] = self.unique(base)
        return self.map[v.name]

    def unique(self, base: str) -> str:
        """``base``, or ``base_N`` with the first free N (each base remembers where it got to)."""
        name, i = base, self.next.get(base, 1)
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.next[base] = i
        self.used.add(name)
        return name


def _short_op(name: str) -> str:
    """``aten.addmm.default -> aten.addmm``; other names unchanged."""
    return name[: -len(".default")] if name.endswith(".default") else name


def emit_python(graph: Graph, plan: Plan | None = None, check=None) -> str:
    """Python source of ``run(weights, *inputs)``: the planned IR ``graph`` printed as code.

    The IR alone decides (``plan`` is accepted for callers of the old signature and ignored): the
    node order is the order of the statements; each storage is one ``torch.empty`` of its bytes,
    allocated per run; a value with a ``slot`` is a view of its storage at its offset with its
    strides, written by its op's ``out=`` form; a value with its ``own`` buffer (a graph output) is
    allocated with its strides just before the op writes it; a kernel-owned value (or any value of
    an unplanned graph) is the op's own result. Values outside the storages are dropped (``del``)
    at their last use, so each lives exactly its planned interval.
    """
    _check_emittable(graph)
    check = check if check is not None else _plan_check(graph)  # the header's figures
    target = graph.attrs.get("target")
    lines = [f"# memplan: graph {comment_text(graph.name)}"
             f"{' on target ' + comment_text(target) if target else ''}, {len(graph.nodes)} steps"]
    lines += plan_comment(check)
    lines += ["from math import inf, nan", "", "import torch", "", "aten = torch.ops.aten", "", ""]
    functions: list[list[str]] = []
    names = _Names()
    main_fn = _function(graph, "run_boxed", functions, weights=True, names=names, boxed=True)
    body = [line for fn in functions + [main_fn] for line in fn]
    helpers = [h for h in ("fresh", "memplan_ops") if any(f"{h}(" in line or f"{h}." in line for line in body)]
    if helpers:  # the emitted module runs on its own too (load_python provides the same objects)
        lines[-3:-3] = [f"from memplan.backends.pytorch import {', '.join(helpers)}  # noqa: F401", ""]
    for fn in functions:
        lines += fn + ["", ""]
    params = [names(v) for v in graph.inputs]
    lines += [f"def run({', '.join(['weights'] + params)}):",
              "    # the inputs in a list that run_boxed empties: an input nobody else holds is freed at its last use",
              f"    return run_boxed(weights, [{', '.join(params)}])", "", ""]
    lines += main_fn
    return "\n".join(lines) + "\n"


def plan_comment(check) -> list[str]:
    """The header line of emitted code that states the plan's figures (none for an unplanned graph)."""
    if check is None:
        return []
    main = check.main_tier
    return [f"# planned peak {format_bytes(check.planned_peak_bytes)}: storage "
            f"{format_bytes(check.storage_bytes.get(main, 0))} + values outside it and scratch "
            f"{format_bytes(max(check.outside_profile.get(main, [0])))}; inputs + weights "
            f"{format_bytes(check.resident_bytes.get(main, 0))}"]


def _function(graph: Graph, fname: str, functions: list[list[str]], *, weights: bool,
              names: "_Names | None" = None, emit_step=None, boxed: bool = False) -> list[str]:
    """The lines of ``def fname(...)`` running ``graph``; the body of each region node becomes a
    function of its own, appended to ``functions`` (inner ones first). ``names``: the value names
    (a backend may keep more words clear); ``emit_step(node, names, comment)``: a backend's lines
    for a node it runs otherwise (None: this backend's)."""
    names = names if names is not None else _Names()
    params = ", ".join(names(v) for v in graph.inputs)
    head = f"weights{', ' if params else ''}{params}" if weights else params
    body = []
    if boxed:  # the inputs come in a list, emptied here: the only references are then this frame's
        head = "weights, inputs" if weights else "inputs"
        if params:
            body += [f"{params}, = inputs", "inputs.clear()"]
    lines = [f"def {fname}({head}):"]
    body += [f"{names(p)} = weights[{p.name!r}]" for p in graph.params]
    body += _storage_prologue(graph)
    freed_at = _last_uses(graph)
    for step, node in enumerate(graph.nodes):
        origin = ", ".join(x for x in (_short_op(node.source_op or node.op), node.source) if x)
        comment = f"  # {step}: from {comment_text(origin)}"
        if node.recomputes is not None:
            comment += f" (recomputes %{comment_text(node.recomputes.name)})"
        custom = emit_step(node, names, comment) if emit_step is not None else None
        if custom is not None:
            body += custom
        elif node.reuses is not None and node.op not in REGION_OPS:
            body += _inplace_step(node, names, comment)
        elif node.op in REGION_OPS:
            region = f"region_{len(functions)}_{identifier(node.name)}"
            functions.append(_function(node.subgraph, region, functions, weights=False))
            body += _region_step(node, names, region, comment)
        else:
            body += _step(graph, node, names, comment)
        dead = [names(v) for v in freed_at.get(step, [])]
        if dead:
            body.append(f"del {', '.join(dead)}")
    rets = [names(v) for v in graph.outputs]
    body.append("return ()" if not rets else f"return {rets[0]}" if len(rets) == 1 else
                f"return ({''.join(r + ', ' for r in rets)})")
    return lines + ["    " + b for b in body]


def _region_step(node, names, region: str, comment: str) -> list[str]:
    """A group calls its body's function once (its results are its outputs); a loop runs it once per
    trip on views of its inputs and writes each trip's results into its output buffers."""
    args = [names(v) for v in node.args]
    if node.op == GROUP:
        return [f"{_targets(node, names)} = {region}({', '.join(args)}){comment}"]
    spec = loop_spec(node)
    if node.reuses is not None:  # each trip's result goes over the input tile it has just read
        lines = [f"{names(node.outputs[0])} = {names(node.reuses)}"]
    else:
        lines = [f"{names(v)} = {_buffer(v)}" for v in node.outputs]
    # a carried state lives in its output's buffer: the argument copied in first, each trip reads it and
    # its result (a new value) is copied over it
    for a, s in zip(args, spec.inputs):
        if s.kind == "carry":
            lines.append(f"{names(node.outputs[s.dim])}.copy_({a})")
    tiles = [names(node.outputs[s.dim]) if s.kind == "carry" else a if s.kind == "full"
             else f"{a}.narrow({s.dim}, t * {s.step}, {s.size})" for a, s in zip(args, spec.inputs)]
    results = [f"trip_{j}" for j in range(len(node.outputs))]
    kind = "recurrent loop" if any(s.kind == "carry" for s in spec.inputs) else "tiled loop"
    lines.append(f"for t in range({spec.trips}):{comment} ({kind})")
    lines.append(f"    {', '.join(results)} = {region}({', '.join(tiles)})")
    for v, r, combine, body_out in zip(node.outputs, results, spec.outputs, node.subgraph.outputs):
        out = names(v)
        if combine.kind == "concat":
            n = int(body_out.type.shape[combine.dim])
            lines.append(f"    {out}.narrow({combine.dim}, t * {n}, {n}).copy_({r})")
        elif combine.kind == "last":
            lines.append(f"    {out}.copy_({r})")
        else:
            lines.append(f"    if t == 0:")
            lines.append(f"        {out}.copy_({r})")
            lines.append(f"    else:")
            lines.append(f"        {out}.add_({r})")
    lines.append(f"    del {', '.join(results)}")
    return lines


def _plan_check(graph: Graph):
    """The checker's figures of a planned graph (None for a graph with no allocation)."""
    if not graph.storages and not any(v.alloc is not None for v in graph.values()):
        return None
    from memplan.analysis.check import verify_plan
    return verify_plan(graph)


def _check_emittable(graph: Graph) -> None:
    """The emitted code holds literals only: every shape is concrete and every argument a plain
    value (a symbolic dim printed into code would be read as a Python name)."""
    import sympy
    from memplan.errors import MemplanError

    for v in graph.values():
        if not v.type.is_static:
            raise MemplanError(f"value %{v.name} has symbolic type {v.type}: the PyTorch backend emits concrete "
                               "shapes; bind the symbolic dims first (example inputs, --input-shape)")
    for node in graph.nodes:
        for leaf in iter_leaves((node.args, node.kwargs)):
            if isinstance(leaf, sympy.Basic):
                raise MemplanError(f"node {node.name} ({node.op}) has the symbolic argument {comment_text(leaf)}: "
                                   "the PyTorch backend emits concrete values only")
        if node.subgraph is not None:
            _check_emittable(node.subgraph)


def _call(node, names, op: str | None = None, outs: dict[str, Value] | None = None) -> str:
    """The call of ``node`` (as overload ``op`` if given, with the ``outs`` keyword arguments), by the
    fastest binding that reaches exactly that overload (:func:`~memplan.backends.bindings.fast_binding`)."""
    op = op or node.op
    outs = outs or {}
    parts = format_arguments(node, names) + [f"{arg}={names(v)}" for arg, v in outs.items()]
    binding = fast_binding(node, op, outs)
    if binding is not None and binding.startswith("."):
        return f"{parts[0]}{binding}({', '.join(parts[1:])})"
    if binding is None:
        binding = "memplan_ops." + op[len("memplan."):] if op.startswith("memplan.") else op
    return f"{binding}({', '.join(parts)})"


def _targets(node, names) -> str:
    outs = [names(v) for v in node.outputs]
    opdef = lookup(node.op, node=node.name)
    return outs[0] if (len(outs) == 1 and not _returns_sequence(opdef)) else ", ".join(outs) + ","


def _last_uses(graph: Graph) -> dict[int, list[Value]]:
    """Step -> values to drop after it: every name of a value not living in a storage, at its own last
    use (a storage's bytes stay allocated; its views need no ``del``). Graph outputs and weights stay."""
    in_storage = _in_storage(graph)
    last_use: dict[str, int] = {}
    values: dict[str, Value] = {}
    for step, node in enumerate(graph.nodes):
        for v in node.inputs:
            last_use[v.name] = step
            values[v.name] = v
        for v in node.outputs:
            last_use.setdefault(v.name, step)
            values[v.name] = v
    keep = {v.name for v in graph.outputs} | {v.name for v in graph.params}
    freed_at: dict[int, list[Value]] = {}
    for name, step in last_use.items():
        if name not in keep and name not in in_storage:
            freed_at.setdefault(step, []).append(values[name])
    for step in freed_at:
        freed_at[step].sort(key=lambda v: v.name)
    return freed_at


def _in_storage(graph: Graph) -> set[str]:
    """Names of the values whose bytes are in a storage (slots, and their views and in-place results)."""
    out: set[str] = set()
    for node in graph.nodes:
        for v in node.outputs:
            if v.alloc is not None and v.alloc.kind == SLOT:
                out.add(v.name)
        base = node.reuses if node.reuses is not None else (
            node.inputs[0] if node.inputs and lookup(node.op, node=node.name).view else None)
        if base is not None and base.name in out:
            out.update(v.name for v in node.outputs)
    return out


def _storage_view(storage: str, dtype: str) -> str:
    return f"{storage}_{dtype}"


def _storage_prologue(graph: Graph) -> list[str]:
    """One ``torch.empty`` per storage and one typed view of it per dtype its slots hold."""
    lines = []
    dtypes: dict[str, set[str]] = {}
    for v in graph.values():
        if v.alloc is not None and v.alloc.kind == SLOT:
            dtypes.setdefault(v.alloc.storage, set()).add(v.type.dtype)
    for name, storage in graph.storages.items():
        var = _storage_name(name)
        lines.append(f"{var} = torch.empty({storage.nbytes}, dtype=torch.uint8)  # storage in tier "
                     f"{comment_text(storage.tier)}: {format_bytes(storage.nbytes)}")
        for dt in sorted(dtypes.get(name, ())):
            lines.append(f"{_storage_view(var, dt)} = {var}.view({DTYPES[dt]})")
    return lines


def _storage_name(name: str) -> str:
    """The variable of a storage: its name if that starts with ``storage_`` (value variables never do),
    else that prefix added."""
    base = identifier(name)
    if base != name:  # lossy (``%a.b`` and ``%a_b``): a digest of the exact name keeps storages apart
        base = f"{base[:40]}_{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return base if base.startswith("storage_") else "storage_" + base


def _slot(v: Value) -> str:
    """``torch.as_strided(storage_f32, shape, strides, start)``: the planned slot of ``v``. (One view
    op: slicing and then viewing costs two calls, and on small transformers that Python overhead
    alone is 5% of the run.)"""
    item = v.type.torch_dtype.itemsize
    shape = tuple(int(d) for d in v.type.shape)
    view = _storage_view(_storage_name(v.alloc.storage), v.type.dtype)
    return f"torch.as_strided({view}, {shape}, {tuple(v.alloc.strides)}, {v.alloc.offset // item})"


def _buffer(v: Value) -> str:
    """The buffer a kernel writes ``v`` into: its slot, its own buffer, or (unplanned) a fresh one."""
    if v.alloc is None or v.alloc.kind not in (SLOT, OWN):
        return f"torch.empty({tuple(int(d) for d in v.type.shape)}, dtype={DTYPES[v.type.dtype]})"
    return _slot(v) if v.alloc.kind == SLOT else _own(v)


def _own(v: Value) -> str:
    shape = tuple(int(d) for d in v.type.shape)
    return f"torch.empty_strided({shape}, {tuple(v.alloc.strides)}, dtype={DTYPES[v.type.dtype]})"


# aten ops whose result may or may not be a view of an input, depending on layouts and arguments
MAY_ALIAS = frozenset({"einsum", "reshape", "to", "type_as", "flatten", "contiguous", "matmul"})


def _may_alias(node) -> bool:
    parts = node.op.split(".")
    return (len(parts) == 3 and parts[0] == "aten" and parts[1] in MAY_ALIAS and len(node.outputs) == 1
            and bool(node.inputs))


def fresh(result, *inputs):
    """``result``, copied if it shares storage with one of ``inputs`` (emitted code's helper)."""
    base = result.untyped_storage().data_ptr()
    if any(isinstance(x, torch.Tensor) and x.untyped_storage().data_ptr() == base and result.numel()
           for x in inputs):
        return result.clone()
    return result


def _step(graph: Graph, node, names, comment) -> list[str]:
    """The statements of one step: a plain call for views and kernel-owned results, else the ``out=``
    form writing into the slots and own buffers the IR gives the outputs."""
    opdef = lookup(node.op, node=node.name)
    given = [v for v in node.outputs if v.alloc is not None and v.alloc.kind in (SLOT, OWN)]
    if not opdef.view and not given and _may_alias(node):
        # the planner counts the result as new bytes; where the kernel returned a view of an input
        # instead (einsum of a permutation, reshape of a dense tensor), a copy makes it so
        inputs = ", ".join(dict.fromkeys(names(v) for v in node.inputs))
        return [f"{names(node.outputs[0])} = fresh({_call(node, names)}, {inputs}){comment}"]
    if opdef.view or not given or node.subgraph is not None:
        return [f"{_targets(node, names)} = {_call(node, names)}{comment}"]
    out = out_variant(node.op)
    if out is None or len(given) != len(node.outputs):
        from memplan.errors import MemplanError
        raise MemplanError(f"node {node.name} ({node.op}): the IR gives its outputs buffers, but the PyTorch "
                           "backend can only write into them through an out= form of the op, which it lacks for "
                           "all of them; mark the results kernel-owned")
    out_op, out_args = out
    lines = [f"{names(v)} = {_slot(v) if v.alloc.kind == SLOT else _own(v)}" for v in node.outputs]
    lines.append(f"{_call(node, names, out_op, dict(zip(out_args, node.outputs)))}{comment}")
    return lines


def _inplace_step(node, names, comment) -> list[str]:
    """A node that writes over its input ``node.reuses`` (the ``inplace`` pass): its output *is*
    that input's tensor, arena slot or not."""
    v = node.outputs[0]
    reused = node.reuses
    lines = [f"{names(v)} = {names(reused)}"]
    out = out_variant(node.op)
    if out is not None:
        out_op, out_args = out
        lines.append(f"{_call(node, names, out_op, {out_args[0]: v})}{comment} (in place)")
    else:
        lines.append(f"{names(v)}.copy_({_call(node, names)}){comment} (in place; no out= variant)")
    return lines


def load_python(source: str, module_name: str = "memplan_generated"):
    """Compile emitted source; return its ``run`` function (tracebacks show the source)."""
    from memplan.ir.ops import _CUSTOM

    filename = f"<{module_name}_{next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": module_name, "memplan_ops": _CustomOps(_CUSTOM), "fresh": fresh}
    exec(compile(source, filename, "exec"), namespace)
    run = namespace["run"]
    if "run_boxed" in namespace:
        run.boxed = namespace["run_boxed"]  # CompiledModule.call_boxed
    return run


class _CustomOps:
    """``memplan_ops.<name>`` in emitted code resolves to the registered reference implementation."""

    def __init__(self, table):
        self._table = table

    def __getattr__(self, name):
        return self._table["memplan." + name].impl


memplan_ops = _CustomOps(_CUSTOM)  # what emitted code calls memplan.* ops through


class PyTorchBackend:
    """The PyTorch backend (:mod:`memplan.backends.base`): aten and oneDNN kernels, ``out=`` forms
    into planned slots, scratch measured on this host, the planned IR printed as Python."""

    name = "pytorch"

    def legalize(self, graph: Graph, ctx) -> Graph:
        """Kernel choice: 2-D convolutions by oneDNN in channels-last layout (``mkldnn_conv``)."""
        for name in LEGALIZE_PASSES:
            graph = ctx.run_pass(name, graph)
        return graph

    def writes_into(self, node) -> bool:
        """A loop writes each trip into its buffers; other ops need an ``out=`` form (a view needs none)."""
        if node.op == LOOP:
            return True
        return node.subgraph is None and not lookup(node.op, node=node.name).view and out_variant(node.op) is not None

    def scratch(self, graph: Graph, slotted: set[str], options: dict, log: list[str] | None = None,
                only: set[str] | None = None) -> dict[str, int]:
        from memplan.backends.pytorch_scratch import step_scratch
        return step_scratch(graph, options, log, slotted, only)

    def emit(self, graph: Graph, check=None) -> str:
        """The planned IR as Python (``check``: the checker's figures of it, if already computed)."""
        return emit_python(graph, check=check)


LEGALIZE_PASSES = ("mkldnn_conv",)

__all__ = ["PyTorchBackend", "emit_python", "load_python"]
