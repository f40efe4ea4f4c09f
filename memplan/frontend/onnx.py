"""ONNX → memplan IR.

The importer specialises a model to concrete input shapes and walks its
nodes in order. Each ONNX node lowers, through the table in
:mod:`memplan.frontend.onnx_ops`, to one or more IR nodes — aten ops where
aten has the semantics, ``memplan.*`` ops otherwise — that carry the ONNX
node name as ``source`` and ``onnx::<OpType>`` as ``source_op``. What the
lowerings share with this module (the node builder, attributes, dtype
conversion, the op table's registry) is in :mod:`memplan.frontend.onnx_common`.

Constant folding happens as the graph is built: every aten call whose tensor
arguments are all constants (initializers, ``Constant`` nodes, ``Shape`` of a
value whose shape is known, results of earlier folds) runs at import time
instead of becoming a node. Shape computations (``Shape → Gather → Concat →
Reshape``) so disappear and their results become literal arguments, e.g.
``aten.reshape.default(%x, [1, 768, 49])``. A constant that a real node reads
becomes a param (its data in ``Graph.weights``).

Types come from meta execution of each lowered node
(:func:`memplan.ir.ops.infer_types`) and are checked against ONNX's own
shape inference (``onnx.shape_inference.infer_shapes``) where it knows them.

>>> import onnx, onnx.helper as oh
>>> x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])
>>> y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
>>> m = oh.make_model(oh.make_graph([oh.make_node("Relu", ["x"], ["y"], name="act")], "g", [x], [y]))
>>> g = from_onnx(m, {"x": (2, 4)})
>>> print(g.nodes[0].op, g.nodes[0].source, g.nodes[0].source_op, g.outputs[0].type)
aten.relu.default act onnx::Relu f32[2, 4]
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from memplan.errors import InputMismatchError, ModelLoadError, UnsupportedOpError
from memplan.frontend.onnx_common import (  # noqa: F401  (also re-exported: the helpers moved there)
    MAX_TENSOR_BYTES, ONNX_DTYPES, EmptyOptional, Importer, NeedsConstantError, OnnxSequence, NodeBuilder, _nbytes, array_to_tensor,
    attributes, is_const, onnx_type_name, tensor_from_proto, tensor_to_array, torch_dtype_of)
from memplan.frontend.onnx_ops import lower_node  # the op table (its modules register on import)
from memplan.ir.graph import Graph, Value
from memplan.ir.ops import lookup
from memplan.ir.types import TensorType, dtype_name
from memplan.profiling import available_memory

MIN_OPSET = 13
DATA_PROP_INPUT_LIMIT = 2**20  # bytes of one input up to which ONNX shape inference propagates data
FOLD_LIMIT = 2 * 2**30  # bytes a fold may add beyond its constant inputs (or a quarter of the free memory)


# ---------------------------------------------------------------- loading
def load_model(model_or_path):
    """An ``onnx.ModelProto`` from a ModelProto or a path; :class:`ModelLoadError` naming the file."""
    import onnx
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    path = Path(model_or_path)
    if not path.exists():
        raise ModelLoadError(f"ONNX model file {str(path)!r} does not exist")
    if not path.is_file():
        raise ModelLoadError(f"ONNX model path {str(path)!r} is not a file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot read ONNX model {str(path)!r} (truncated or not an ONNX file): "
                             f"{reason}") from None
    if not model.HasField("graph") or (len(model.graph.node) == 0 and len(model.graph.output) == 0):
        raise ModelLoadError(f"{str(path)!r} holds no ONNX graph (truncated or not an ONNX file)")
    return model


def newest_opset() -> int:
    """The newest default-domain opset the installed ``onnx`` package defines (memplan's limit)."""
    import onnx.defs
    return onnx.defs.onnx_opset_version()


def validate_model(model) -> None:
    """Reject what ONNX itself (and onnxruntime) rejects before anything is lowered: an opset newer
    than the installed ``onnx`` defines, a value defined twice (two nodes writing one name, a node
    output shadowing a graph input or initializer), a read of an undefined value, and a graph
    with no outputs. Raises :class:`ModelLoadError` naming the opset, node or value.
    """
    opset, newest = default_opset(model), newest_opset()
    if opset < 1:
        raise ModelLoadError(f"the model imports ONNX opset {opset} (default domain); opsets start at 1")
    if opset > newest:
        raise ModelLoadError(f"the model imports ONNX opset {opset} (default domain); the newest opset "
                             f"memplan knows is {newest} (onnx {_onnx_version()})")
    g = model.graph
    defined: dict[str, str] = {}
    for vi in g.input:
        if not vi.name:
            raise ModelLoadError("a graph input has an empty name")
        if vi.name in defined:
            raise ModelLoadError(f"graph input {vi.name!r} is declared twice")
        defined[vi.name] = "a graph input"
    initializers: set[str] = set()
    for init in g.initializer:
        if init.name in initializers:
            raise ModelLoadError(f"initializer {init.name!r} is defined twice")
        initializers.add(init.name)
        defined.setdefault(init.name, "an initializer")  # an input with a default value: one value
    for sparse in g.sparse_initializer:
        defined.setdefault(sparse.values.name, "a sparse initializer")
    for node in g.node:
        where = f"node {node.name!r} ({node.op_type})" if node.name else f"a {node.op_type} node"
        for name in node.input:
            if name and name not in defined:
                raise ModelLoadError(f"{where} reads {name!r}, which no earlier node, graph input or "
                                     "initializer defines (the graph is not topologically sorted, or the "
                                     "name is misspelt)")
        for name in node.output:
            if not name:
                continue
            if name in defined:
                raise ModelLoadError(f"{where} writes {name!r}, which {defined[name]} already defines; an "
                                     "ONNX value is assigned exactly once")
            defined[name] = where
    if not len(g.output):
        raise ModelLoadError(f"graph {g.name!r} has no outputs; memplan plans graphs that return at least "
                             "one tensor")
    for vi in g.output:
        if vi.name not in defined:
            raise ModelLoadError(f"graph output {vi.name!r} is not produced by any node, graph input or "
                                 "initializer")


def _onnx_version() -> str:
    import onnx
    return onnx.__version__


def default_opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def prepare_model(model):
    """Inline model-local functions and upgrade opsets older than 13 when the converter can."""
    import onnx
    if len(model.functions):
        try:
            import onnx.inliner
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:
            raise ModelLoadError(f"cannot inline the model's local functions: {str(exc).splitlines()[0]}") from None
    if default_opset(model) < 9 and any(n.op_type == "Scan" for n in model.graph.node):
        raise UnsupportedOpError("ONNX op Scan at opset 8 (a batch axis and sequence_lens) is not supported; "
                                 "export the model at opset 9 or newer")
    if default_opset(model) < MIN_OPSET:
        try:
            import onnx.version_converter
            converted = onnx.version_converter.convert_version(model, MIN_OPSET)
            if len(converted.graph.node) or not len(model.graph.node):
                model = converted
        except Exception:  # keep the old opset; lowerings read legacy attribute forms
            pass
    return model


# ---------------------------------------------------------------- shapes
def input_shapes_from_spec(spec: str) -> dict[str, tuple[int, ...]]:
    """Parse ``"x=1x3x224x224,mask=1x128"`` into ``{"x": (1, 3, 224, 224), "mask": (1, 128)}``.

    A scalar input is written ``name=`` (empty shape). For the CLI's ``--input-shape``.

    >>> input_shapes_from_spec("x=1x3x224x224, y=7")
    {'x': (1, 3, 224, 224), 'y': (7,)}
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, eq, dims = part.partition("=")
        name, dims = name.strip(), dims.strip()
        if not eq or not name:
            raise InputMismatchError(f"input shape {part!r} is not NAME=D1xD2x... (e.g. x=1x3x224x224)")
        text = dims.lower().split("x") if dims else []
        if not all(d.strip().isdigit() and d.strip().isascii() for d in text):
            raise InputMismatchError(f"input shape {_clip(part)!r}: dims must be non-negative integers "
                                     "separated by 'x' (e.g. x=1x3x224x224)")
        if any(len(d.strip()) > 16 for d in text):
            raise InputMismatchError(f"input shape {_clip(part)!r}: a dim has more than 16 digits")
        if name in shapes:
            raise InputMismatchError(f"input shape for {_clip(name)!r} is given twice")
        shapes[name] = tuple(int(d) for d in text)
    return shapes


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def check_tensor_size(what: str, shape: tuple[int, ...], dtype: torch.dtype, error=InputMismatchError) -> None:
    """Raise ``error`` if ``shape`` has a negative dim or its ``dtype`` bytes exceed
    :data:`MAX_TENSOR_BYTES` (a claim no memory holds, which would overflow size arithmetic)."""
    for axis, d in enumerate(shape):
        if d < 0:
            raise error(f"{what} has dim {d} at axis {axis}; dims must be non-negative")
    nbytes = torch.empty((), dtype=dtype).element_size()
    for d in shape:
        nbytes *= d
    if nbytes > MAX_TENSOR_BYTES:
        raise error(f"{what} has shape {list(shape)}: {nbytes} bytes of {dtype}, more than any memory holds "
                    f"(memplan's limit is 2**53 bytes per tensor)")


def _declared_dims(value_info) -> list | None:
    """Dims of a graph input: ints, dim_param strings, or None for unknown; None if no shape."""
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def _example_for(example_inputs, index: int, name: str):
    if example_inputs is None:
        return None
    if isinstance(example_inputs, dict):
        return example_inputs.get(name)
    if index < len(example_inputs):
        return example_inputs[index]
    return None


def _is_shape(obj) -> bool:
    return isinstance(obj, (tuple, list, torch.Size)) and all(isinstance(d, (int, np.integer)) for d in obj)


def resolve_input_type(value_info, example) -> tuple[TensorType, torch.Tensor | None]:
    """The concrete IR type of a graph input (and the example tensor, if data was given)."""
    name = value_info.name
    if not value_info.type.HasField("tensor_type"):
        kind = value_info.type.WhichOneof("value")
        raise UnsupportedOpError(f"graph input {name!r} is a {kind}; memplan takes tensor inputs only")
    tt = value_info.type.tensor_type
    dtype = torch_dtype_of(tt.elem_type, f"graph input {name!r}")
    declared = _declared_dims(value_info)
    data = None
    if example is None:
        if declared is None:
            raise InputMismatchError(f"graph input {name!r} declares no shape; pass example inputs "
                                     f"(or --input-shape {name}=D1xD2x...)")
        for i, d in enumerate(declared):
            if not isinstance(d, int):
                label = f"symbolic dim {d!r}" if isinstance(d, str) else "an unknown dim"
                raise InputMismatchError(
                    f"graph input {name!r} has {label} at axis {i} (declared shape "
                    f"[{', '.join(str(x) if x is not None else '?' for x in declared)}]); memplan plans "
                    f"concrete shapes: pass example inputs (or --input-shape {name}=D1xD2x...)")
        check_tensor_size(f"graph input {name!r}", tuple(declared), dtype, ModelLoadError)
        return TensorType(dtype_name(dtype), tuple(declared)), None
    if _is_shape(example):
        shape = tuple(int(d) for d in example)
    else:
        if isinstance(example, np.ndarray) or isinstance(example, (np.generic, float, int, bool)):
            try:
                example = array_to_tensor(np.asarray(example))
            except UnsupportedOpError as exc:
                raise InputMismatchError(f"example input {name!r}: {exc}") from None
        if not isinstance(example, torch.Tensor):
            raise InputMismatchError(f"example input {name!r} is a {type(example).__name__}; give a tensor, "
                                     "a numpy array or a shape tuple")
        if example.dtype != dtype:
            raise InputMismatchError(f"example input {name!r} has dtype {example.dtype}, the model declares "
                                     f"{onnx_type_name(tt.elem_type)} ({dtype})")
        shape = tuple(example.shape)
        data = example
    if declared is not None:
        if len(declared) != len(shape):
            raise InputMismatchError(f"example input {name!r} has shape {list(shape)} (rank {len(shape)}), the "
                                     f"model declares rank {len(declared)}: "
                                     f"[{', '.join(str(x) if x is not None else '?' for x in declared)}]")
        for i, (d, s) in enumerate(zip(declared, shape)):
            if isinstance(d, int) and d != s:
                raise InputMismatchError(f"example input {name!r} has shape {list(shape)}, the model declares "
                                         f"{declared} (axis {i}: {s} != {d})")
    check_tensor_size(f"example input {name!r}", shape, dtype)
    return TensorType(dtype_name(dtype), shape), data


def fold_limit() -> int:
    """The most bytes a constant fold may produce beyond its inputs: ``FOLD_LIMIT``, or a quarter of
    the memory the host has free if that is less. A weight built by ``Expand``/``ConstantOfShape``
    (as light models build theirs) folds into a param; a larger claim stays a node, which the
    capacity checks then weigh before anything is allocated."""
    available = available_memory()
    return FOLD_LIMIT if available is None else min(FOLD_LIMIT, available // 4)


# ---------------------------------------------------------------- the import
def _onnx_types(model, input_types: dict[str, TensorType], bound: dict[str, torch.Tensor]) -> dict:
    """ONNX shape inference on the model specialised to the concrete input types."""
    import onnx
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        t = input_types.get(vi.name)
        if t is None:
            continue
        tt = vi.type.tensor_type
        tt.ClearField("shape")
        tt.shape.SetInParent()
        for d in t.shape:
            tt.shape.dim.add().dim_value = int(d)
    if bound:
        from onnx import numpy_helper
        keep = [vi for vi in m.graph.input if vi.name not in bound]
        del m.graph.input[:]
        m.graph.input.extend(keep)
        for name, t in bound.items():
            m.graph.initializer.append(numpy_helper.from_array(tensor_to_array(t), name))
    # ONNX's data propagation evaluates Range on its constant inputs, however long the file says
    # the range is (10**12 elements: std::bad_alloc, or the OOM killer): without it there
    try:
        # data propagation also materialises ConstantOfShape and what follows it at the size of the
        # inputs (a Shape -> Mul -> ConstantOfShape chain: 10 GB for a 256 MiB input); only small
        # graphs of small inputs get it
        small = all(_nbytes(t.shape, t.torch_dtype) <= DATA_PROP_INPUT_LIMIT for t in input_types.values())
        data_prop = small and not any(node.op_type in ("Range", "ConstantOfShape", "Expand", "Tile")
                                      for node in m.graph.node)
        inferred = onnx.shape_inference.infer_shapes(m, check_type=False, strict_mode=False, data_prop=data_prop)
    except Exception:
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if not vi.type.HasField("tensor_type"):
            continue
        dims = _declared_dims(vi)
        if dims is not None and not all(isinstance(d, int) for d in dims):
            dims = None
        out[vi.name] = (vi.type.tensor_type.elem_type, dims)
    return out


def from_onnx(model_or_path, example_inputs=None, *, bind_inputs: dict | None = None,
              check_types: bool = True, name: str | None = None) -> Graph:
    """Lower an ONNX model (a ``ModelProto`` or an ``.onnx`` path) to an IR :class:`Graph`.

    ``example_inputs``: tensors, numpy arrays or shape tuples, as a sequence in
    graph-input order (initializers excluded) or a dict by input name; the
    graph is specialised to their shapes. Without them, the model's declared
    input shapes must be concrete. ``bind_inputs``: ``{input name: array}``,
    graph inputs whose values are fixed at import time (they become constants
    and leave the graph signature) — for models that compute shapes from
    inputs. Raises :class:`ModelLoadError`, :class:`UnsupportedOpError`,
    :class:`InputMismatchError`.
    """
    model = load_model(model_or_path)
    validate_model(model)
    model = prepare_model(model)
    opset = default_opset(model)
    g = model.graph
    graph = Graph(_identifier(name or g.name or "onnx_model"))
    importer = Importer(graph, opset, {}, fold_limit=fold_limit)
    importer.lower_node = lower_node

    initializers = {}
    for init in g.initializer:
        initializers[init.name] = tensor_from_proto(init, f"initializer {init.name!r}")
    for sparse in g.sparse_initializer:
        raise UnsupportedOpError(f"sparse initializer {sparse.values.name!r} is not supported")

    bound = {k: array_to_tensor(v) for k, v in (bind_inputs or {}).items()}
    real_inputs = [vi for vi in g.input if vi.name not in initializers]
    unknown = set(bound) - {vi.name for vi in real_inputs}
    if unknown:
        raise InputMismatchError(f"bind_inputs names {sorted(unknown)}, which are not graph inputs "
                                 f"({', '.join(vi.name for vi in real_inputs)})")
    free_inputs = [vi for vi in real_inputs if vi.name not in bound]
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, dict):
        extra = set(example_inputs) - {vi.name for vi in real_inputs}
        if extra:
            raise InputMismatchError(f"example inputs name {sorted(extra)}, which are not graph inputs of the "
                                     f"model ({', '.join(vi.name for vi in free_inputs) or 'none'})")
    elif example_inputs is not None and len(example_inputs) > len(free_inputs):
        raise InputMismatchError(f"got {len(example_inputs)} example inputs, the model takes {len(free_inputs)} "
                                 f"({', '.join(vi.name for vi in free_inputs) or 'none'})")

    input_types: dict[str, TensorType] = {}
    structured: dict[str, object] = {}  # sequence and optional graph inputs: their element types
    for i, vi in enumerate(free_inputs):
        example = _example_for(example_inputs, i, vi.name)
        kind = vi.type.WhichOneof("value")
        if kind in ("sequence_type", "optional_type"):
            structured[vi.name] = _structured_input(vi, example)
            continue
        t, _ = resolve_input_type(vi, example)
        input_types[vi.name] = t
    for name_, data in bound.items():
        vi = next(v for v in real_inputs if v.name == name_)
        want = torch_dtype_of(vi.type.tensor_type.elem_type, f"graph input {name_!r}")
        bound[name_] = data.to(want) if data.dtype != want else data
    if check_types:
        importer.onnx_types = _onnx_types(model, input_types, bound)

    for init in g.initializer:
        importer.elem_types[init.name] = init.data_type
    for vi in real_inputs:
        if vi.type.HasField("tensor_type"):
            importer.elem_types[vi.name] = vi.type.tensor_type.elem_type
    for name_, t in initializers.items():
        importer.env[name_] = t
        importer.const_names[id(t)] = name_
    for name_, t in bound.items():
        importer.env[name_] = t
        importer.const_names[id(t)] = name_
    for vi in free_inputs:
        if vi.name in structured:
            importer.env[vi.name] = _bind_structured(graph, importer, vi.name, structured[vi.name])
            continue
        value = graph.add_input(vi.name, input_types[vi.name])
        importer.env[vi.name] = value
        importer.input_names[value.name] = vi.name

    for node in g.node:
        lower_node(importer, node)

    outputs = []
    structure = []  # per ONNX output: None (a tensor), the length of a sequence, or "empty" (an empty optional)
    for vi in g.output:
        if vi.name not in importer.env:
            raise ModelLoadError(f"graph output {vi.name!r} is not produced by any node")
        v = importer.env[vi.name]
        if v is None or isinstance(v, EmptyOptional):
            structure.append("empty")
            continue
        items = list(v) if isinstance(v, OnnxSequence) else [v]
        structure.append(len(items) if isinstance(v, OnnxSequence) else None)
        for j, item in enumerate(items):
            outputs.append(importer.materialize(item, f"{vi.name}_{j}" if isinstance(v, OnnxSequence) else vi.name)
                           if is_const(item) else item)
    graph.outputs = _fresh_outputs(graph, outputs)
    graph.onnx_outputs = structure  # how the flat IR outputs group into the ONNX outputs (sequences)
    return graph


def _structured_input(vi, example):
    """(kind, element types) of a sequence or optional graph input from its example: a list of
    tensors for a sequence, None (empty) or the held value for an optional."""
    t = vi.type
    if t.HasField("optional_type"):
        inner = t.optional_type.elem_type
        if example is None:
            return ("empty", inner.WhichOneof("value"))
        if inner.HasField("sequence_type"):
            return ("sequence", inner.sequence_type.elem_type.tensor_type.elem_type, example)
        return ("tensor", inner.tensor_type.elem_type, example)
    elem = t.sequence_type.elem_type
    if not elem.HasField("tensor_type"):
        raise UnsupportedOpError(f"graph input {vi.name!r} is a sequence of {elem.WhichOneof('value')}; memplan "
                                 "takes sequences of tensors")
    if example is None:
        raise InputMismatchError(f"graph input {vi.name!r} is a sequence: pass its example (a list of tensors)")
    return ("sequence", elem.tensor_type.elem_type, example)


def _bind_structured(graph, importer, name: str, spec):
    """Graph inputs for a sequence's elements (``name_0``, ``name_1``, ...) or an optional's value."""
    kind = spec[0]
    if kind == "empty":
        return EmptyOptional("sequence" if spec[1] == "sequence_type" else "tensor")
    elem, example = spec[1], spec[2]
    dtype = torch_dtype_of(elem, f"graph input {name!r}")
    items = list(example) if kind == "sequence" else [example]
    values = []
    for j, item in enumerate(items):
        shape = tuple(item) if _is_shape(item) else tuple(np.asarray(item).shape if not isinstance(item, torch.Tensor)
                                                          else item.shape)
        check_tensor_size(f"element {j} of graph input {name!r}", shape, dtype)
        value = graph.add_input(f"{name}_{j}" if kind == "sequence" else name, TensorType(dtype_name(dtype), shape))
        importer.input_names[value.name] = name
        values.append(value)
    return OnnxSequence(values, elem) if kind == "sequence" else values[0]


def _fresh_outputs(graph: Graph, outputs: list[Value]) -> list[Value]:
    """ONNX has value semantics: onnxruntime returns every output as an array of its own. An
    output whose storage is a graph input or an initializer (``Identity``, a ``Reshape`` of it),
    or is another output's (one name listed twice, an output and a reshape of it), becomes a copy."""
    root: dict[str, str] = {}
    for v in graph.inputs + graph.params:
        root[v.name] = v.name
    for node in graph.nodes:
        # aten.reshape returns a view wherever the layout allows (canonicalize makes it one)
        view = (lookup(node.op, node=node.name).view or node.op == "aten.reshape.default") and node.inputs
        for v in node.outputs:
            root[v.name] = root[node.inputs[0].name] if view else v.name
    resident = {v.name for v in graph.inputs + graph.params}
    taken: set[str] = set()
    fresh = []
    for v in outputs:
        r = root[v.name]
        if r in resident or r in taken:
            v = graph.add_node("aten.clone.default", (v,), {"memory_format": torch.contiguous_format}, [v.type],
                               name=f"{v.name}_copy", source=v.name, source_op="onnx::graph_output")[0]
            r = v.name
        taken.add(r)
        fresh.append(v)
    return fresh


def _identifier(text: str) -> str:
    text = re.sub(r"\W", "_", text)
    return text if text and not text[0].isdigit() else "g_" + text


__all__ = ["from_onnx", "input_shapes_from_spec", "load_model", "NeedsConstantError", "Importer",
           "NodeBuilder", "tensor_to_array", "array_to_tensor", "ONNX_DTYPES"]
