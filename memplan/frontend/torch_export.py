"""torch.export / torch.fx → memplan IR.

The model is captured with ``torch.export``, decomposed to Core ATen with a
table that keeps fused attention (``scaled_dot_product_attention``) whole —
the default table would materialise the full score matrix and raise
activation memory several-fold (see ``shared/MEASURING.md``) — and each aten
call becomes one IR node whose types come from the exported FakeTensors.
"""
from __future__ import annotations

import operator
import re
import warnings

import sympy
import torch
import torch.fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from memplan.errors import InputMismatchError, MemplanError, UnsupportedOpError
from memplan.ir.graph import Graph, Value
from memplan.ir.ops import MASKED_OUTPUTS, lookup
from memplan.ir.types import TensorType, as_dim, sym

# Decompositions we refuse: they raise peak memory above eager.
KEEP_WHOLE = (
    "aten.scaled_dot_product_attention.default",
    "aten._scaled_dot_product_attention_math.default",
    "aten._scaled_dot_product_flash_attention_for_cpu.default",
    "aten._scaled_dot_product_efficient_attention.default",
    # zeros of the table's size, then a functional index_put: a second table-sized copy (GPT-2's
    # 50257-row embedding: 12.3 MiB more than the kernel, which accumulates into its one result)
    "aten.embedding_dense_backward.default",
)


def decomposition_table() -> dict:
    """Core ATen decompositions minus those that would raise the peak (attention scores, a second
    embedding-gradient table)."""
    table = torch.export.default_decompositions()
    for name in KEEP_WHOLE:
        packet, overload = name.split(".")[1:]
        op = getattr(getattr(torch.ops.aten, packet, None), overload, None)
        if op is not None:
            table.pop(op, None)
    return table


def export_model(model, example_inputs, dynamic_shapes=None) -> ExportedProgram:
    """Capture ``model`` (nn.Module, fx.GraphModule or ExportedProgram) and decompose it."""
    if isinstance(model, ExportedProgram):
        program = model
    else:
        if not isinstance(model, torch.nn.Module):
            raise MemplanError(f"cannot capture a {type(model).__name__}: give an nn.Module, "
                               "an fx.GraphModule, an ExportedProgram, an onnx.ModelProto or an .onnx path")
        if example_inputs is None:
            raise InputMismatchError(f"compiling a {type(model).__name__} needs example_inputs "
                                     "(a tuple of tensors matching its forward)")
        args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        for i, a in enumerate(args):
            if not isinstance(a, torch.Tensor):
                raise InputMismatchError(f"example input {i} is a {type(a).__name__}; memplan takes tensors")
        # Each example input gets storage of its own: torch.export specialises the graph to the aliasing
        # it sees (the same tensor passed twice becomes one input), and the plan must hold for
        # distinct tensors at run time.
        args = tuple(a.detach().clone() for a in args)
        was_training = model.training
        model.eval()
        try:
            program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputMismatchError(
                f"torch.export could not capture {type(model).__name__} with the given example inputs "
                f"({', '.join(_describe(a) for a in args)}): {first}") from None
        finally:
            model.train(was_training)
    try:
        return program.run_decompositions(decomposition_table())
    except MemplanError:
        raise
    except Exception as exc:  # torch's own failures (fx codegen of odd module names, missing decompositions)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UnsupportedOpError(f"decomposing the captured program to Core ATen failed: "
                                 f"{type(exc).__name__}: {first}") from None


def _describe(t) -> str:
    return f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


def _dim(d):
    d = as_dim(d)
    if isinstance(d, sympy.Expr):
        return d.subs({s: sym(s.name) for s in d.free_symbols})
    return d


def _type_of(fake) -> TensorType:
    from memplan.ir.types import dtype_name
    return TensorType(dtype_name(fake.dtype), tuple(_dim(s) for s in fake.shape))


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\._modules\['([^']+)'\]", r".\1", path)
    return path


def _source_op(node: torch.fx.Node) -> str:
    original = node.meta.get("original_aten")
    if original is not None:
        return str(original)
    return str(node.target)


def from_exported(program: ExportedProgram, name: str = "main") -> Graph:
    """Lower a (decomposed) ExportedProgram to an IR :class:`Graph`."""
    graph = Graph(name)
    sig = program.graph_signature
    specs = {spec.arg.name: spec for spec in sig.input_specs}
    state = dict(program.state_dict)
    state.update(program.constants)
    env: dict[str, object] = {}
    for node in program.graph.nodes:
        if node.op == "placeholder":
            spec = specs[node.name]
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor):
                raise UnsupportedOpError(f"input {node.name} is a {type(val).__name__}; memplan graphs take "
                                         "tensors only", node=node.name)
            if spec.kind == InputKind.USER_INPUT:
                env[node.name] = graph.add_input(node.name, _type_of(val))
            else:
                data = state[spec.target].detach()
                env[node.name] = graph.add_param(spec.target, _type_of(val), data)
        elif node.op == "call_function":
            env[node.name] = _lower_call(graph, node, env)
        elif node.op == "output":
            outputs = []
            for spec, arg in zip(sig.output_specs, node.args[0]):
                if spec.kind != OutputKind.USER_OUTPUT:
                    raise _effect_error(spec, arg)
                value = env[arg.name] if isinstance(arg, torch.fx.Node) else None
                if not isinstance(value, Value):
                    raise UnsupportedOpError(f"output {arg} is not a tensor", node=node.name)
                outputs.append(value)
            graph.outputs = outputs
        else:
            raise UnsupportedOpError(f"fx node {node.name} has op {node.op!r}; expected a flat, "
                                     "exported graph", node=node.name)
    return graph


def _where(node) -> str:
    """Where in the user's code ``node`` comes from: the last frame of its stack trace, one line."""
    trace = node.meta.get("stack_trace") if isinstance(node, torch.fx.Node) else None
    frames = [line.strip() for line in (trace or "").splitlines() if line.strip().startswith("File ")]
    text = frames[-1] if frames else _module_path(node) if isinstance(node, torch.fx.Node) else ""
    text = "".join(c if c.isprintable() else " " for c in text)
    return f" ({text[:200]})" if text else ""


def _effect_error(spec, arg) -> UnsupportedOpError:
    """The error for an exported output that is not a plain result: a mutation, a gradient, a token."""
    name = arg.name if isinstance(arg, torch.fx.Node) else str(arg)
    target, where = spec.target, _where(arg)
    if spec.kind == OutputKind.USER_INPUT_MUTATION:
        message = (f"the model mutates its input %{target} in place{where}; memplan plans functional graphs, "
                   f"which never write to the caller's tensors: copy the input first ({target} = {target}.clone()) "
                   "or use the out-of-place op")
    elif spec.kind in (OutputKind.BUFFER_MUTATION, getattr(OutputKind, "PARAMETER_MUTATION", None)):
        what = "buffer" if spec.kind == OutputKind.BUFFER_MUTATION else "parameter"
        message = (f"the model updates its {what} {target!r} in place during forward{where}, even in eval mode; "
                   f"memplan plans functional graphs: keep that state outside the model, or return the new "
                   "value as an output")
    else:
        message = (f"the exported model has a {spec.kind.name} output ({target or name}){where}; memplan plans "
                   "inference graphs whose outputs are plain tensors")
    return UnsupportedOpError(message, node=name)


# Runtime checks export inserts; they compute nothing, so they are dropped.
_ASSERTIONS = ("aten._assert_tensor_metadata", "aten._assert_async", "aten._assert_scalar",
               "aten.sym_constrain_range", "aten.sym_constrain_range_for_size", "aten._functional_assert")


def _lower_call(graph: Graph, node: torch.fx.Node, env):
    if str(node.target).startswith(_ASSERTIONS):
        return None
    if node.target is operator.getitem:
        source, index = node.args
        return env[source.name][index]
    if not isinstance(node.target, torch._ops.OpOverload):
        raise UnsupportedOpError(f"node {node.name} calls {node.target!r}, which is not an aten op "
                                 f"(at {_module_path(node) or 'top level'})", op=str(node.target), node=node.name)
    op = str(node.target)  # e.g. aten.addmm.default
    source = _module_path(node)
    lookup(op, node=node.name, source=source)

    def arg(a):
        if isinstance(a, torch.fx.Node):
            value = env[a.name]
            if not isinstance(value, Value):
                raise UnsupportedOpError(f"node {node.name} ({op}) takes {a.name}, which is not a tensor",
                                         op=op, node=node.name)
            return value
        if isinstance(a, (list, tuple)):
            out = [arg(x) for x in a]
            return out if isinstance(a, list) else tuple(out)
        if isinstance(a, torch.SymInt):
            return _dim(a)
        return a

    args = tuple(arg(a) for a in node.args)
    kwargs = {k: arg(v) for k, v in node.kwargs.items()}
    val = node.meta.get("val")
    fakes = [val] if isinstance(val, torch.Tensor) else list(val) if isinstance(val, (list, tuple)) else None
    if fakes is not None and op in MASKED_OUTPUTS and any(f is None for f in fakes):
        # a backward op that skips the gradients its output_mask turns off returns None for them:
        # an empty float tensor stands for each (no bytes; nothing reads it)
        fakes = [torch.empty(0) if f is None else f for f in fakes]
    if fakes is None or not all(isinstance(f, torch.Tensor) for f in fakes):
        raise UnsupportedOpError(f"node {node.name} ({op}) returns {type(val).__name__}, not tensors "
                                 f"(at {source or 'top level'})", op=op, node=node.name)
    outs = graph.add_node(op, args, kwargs, [_type_of(f) for f in fakes], name=node.name,
                          source=source, source_op=_source_op(node))
    return outs[0] if isinstance(val, torch.Tensor) else list(outs)


def from_torch(model, example_inputs=None, *, dynamic_shapes=None, name: str | None = None) -> Graph:
    """Capture and lower a torch model to IR.

    >>> import torch
    >>> g = from_torch(torch.nn.Linear(4, 2), (torch.randn(3, 4),))
    >>> [n.op for n in g.nodes]
    ['aten.permute.default', 'aten.addmm.default']
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = export_model(model, example_inputs, dynamic_shapes)
    label = name or (type(model).__name__ if not isinstance(model, ExportedProgram) else "main")
    return from_exported(program, _identifier(label))


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text) or "main"
