"""memplan as an ONNX backend (``onnx.backend.base.Backend``), for the ONNX backend test suite.

``prepare`` compiles the model with :func:`memplan.compile` (example inputs
built from the declared input types); ``run`` executes the plan and returns
numpy arrays. memplan plans static shapes, so a model is compiled once per
input signature; inputs whose *values* decide shapes (a Reshape's ``shape``
fed as a graph input) are bound at run time and the model is compiled for
those values.

``MemplanBackend.claimed(model)`` says whether memplan claims to run a model
correctly: every node an op of the table (with its ``claim`` predicate
passing), no sub-graphs, and only tensor types memplan holds.

>>> import numpy as np, onnx, onnx.helper as oh
>>> x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
>>> y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
>>> m = oh.make_model(oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
>>> MemplanBackend.claimed(m)
True
>>> MemplanBackend.prepare(m).run([np.array([[-1, 0, 2], [3, -4, 5]], np.float32)])[0].tolist()
[[0.0, 0.0, 2.0], [3.0, 0.0, 5.0]]
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx.backend.base import Backend, BackendRep

import memplan
from memplan.errors import InputMismatchError
from memplan.frontend.onnx import from_onnx, load_model, prepare_model
# CLAIMED_ELEM_TYPES: the ONNX element types the backend claims for every op; the op table's ``claim``
# predicates read them too. The narrow types (8-bit floats, 4- and 2-bit types) are claimed for the ops
# of NARROW_OPS only, uint16/32/64 for those of UNSIGNED_OPS.
from memplan.frontend.onnx_common import (CARRIED_DTYPES, CLAIMED_ELEM_TYPES, NARROW_TYPES, ONNX_DTYPES,
                                          UNSIGNED_WIDE, NeedsConstantError, array_to_tensor, attributes,
                                          tensor_to_array, torch_dtype_of)
from memplan.frontend.onnx_functions import function_body, has_function
from memplan.frontend.onnx_ops import ONNX_OPS  # the whole table (its modules register on import)


# ops that move or reinterpret elements without arithmetic: every type memplan holds
LAYOUT_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Shape", "Size",
                        "Constant", "Cast", "CastLike", "BitCast"})
QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                       "QLinearMatMul", "QLinearConv"})
NARROW_OPS = LAYOUT_OPS | QUANT_OPS
UNSIGNED_OPS = LAYOUT_OPS | QUANT_OPS | frozenset({  # their lowerings compute uint16/32/64 widened (frontend.onnx_unsigned)
    "Add", "Sub", "Mul", "Div", "Mod", "Pow", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot",
    "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Max", "Min", "TopK", "Where", "Not"})
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})  # their bodies are lowered (frontend.onnx_control)
HELD_TYPES = frozenset(ONNX_DTYPES) | frozenset(CARRIED_DTYPES)
_COMPLEX = frozenset({14, 15})


def _held(t) -> bool:
    return t in HELD_TYPES and t not in _COMPLEX


def claim_reason(model) -> str | None:
    """Why memplan does not claim ``model`` (None when it does)."""
    try:
        model = prepare_model(load_model(model))
    except Exception as exc:  # noqa: BLE001
        return f"cannot load: {exc}"
    g = model.graph
    for vi in list(g.input) + list(g.output):
        if not _claimed_type(vi.type):
            return f"{vi.name!r} is not a tensor, sequence of tensors or optional memplan holds"
        if not _held(_elem_type_of(vi.type)):
            return f"{vi.name!r} has element type {_elem_type_of(vi.type)}"
    for init in g.initializer:
        if not _held(init.data_type):
            return f"initializer {init.name!r} has element type {init.data_type}"
    types = {vi.name: vi.type.tensor_type.elem_type for vi in g.input if vi.type.HasField("tensor_type")}
    types.update({i.name: i.data_type for i in g.initializer})
    ranks = {i.name: len(i.dims) for i in g.initializer}
    shapes = {i.name: list(i.dims) for i in g.initializer}  # dims where known: function bodies are built from them
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
            if vi.type.HasField("tensor_type"):
                types[vi.name] = vi.type.tensor_type.elem_type
                if vi.type.tensor_type.HasField("shape"):
                    ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
                    shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                       for d in vi.type.tensor_type.shape.dim]
    except Exception:  # noqa: BLE001
        pass
    return _nodes_reason(g.node, types, ranks, _opset(model), shapes)


def _nodes_reason(nodes, types, ranks, opset, shapes=None) -> str | None:
    """Why memplan does not claim these nodes (a graph's or a body's); None when it does."""
    for node in nodes:
        if node.domain not in ("", "ai.onnx"):
            return f"domain {node.domain}"
        op = ONNX_OPS.get(node.op_type)
        if op is None:
            if not has_function(node.op_type, opset):
                return f"op {node.op_type}"
            reason = _function_reason(node, types, opset, shapes or {})
            if reason:
                return reason
            continue
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPHS or (a.type == onnx.AttributeProto.GRAPH
                                                        and node.op_type not in CONTROL_FLOW_OPS):
                return f"{node.op_type} has a sub-graph"
            if a.type == onnx.AttributeProto.GRAPH:
                for vi in list(a.g.input) + list(a.g.output):
                    kind = vi.type.WhichOneof("value")
                    if (kind is not None and not _claimed_type(vi.type)) or (
                            kind is not None and _elem_type_of(vi.type) and not _held(_elem_type_of(vi.type))):
                        return f"{node.op_type} body value {vi.name!r} is not a tensor memplan holds"
                body_types = dict(types)
                body_types.update({vi.name: vi.type.tensor_type.elem_type for vi in a.g.input
                                   if vi.type.HasField("tensor_type")})
                reason = _nodes_reason(a.g.node, body_types, ranks, opset)
                if reason:
                    return f"{node.op_type} body: {reason}"
        for out in node.output:
            t = types.get(out)
            if t is not None and t != 0 and not _held(t):
                return f"{node.op_type} output {out!r} has element type {t}"
        seen = {types.get(n) for n in list(node.input) + list(node.output) if n}
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            seen.add(node.attribute[0].t.data_type)
        if seen & NARROW_TYPES and node.op_type not in NARROW_OPS:
            return f"{node.op_type} on element type {min(seen & NARROW_TYPES)}"
        if seen & UNSIGNED_WIDE and node.op_type not in UNSIGNED_OPS:
            return f"{node.op_type} on element type {min(seen & UNSIGNED_WIDE)}"
        if op.claim is not None:
            try:
                attrs = attributes(node)
            except Exception as exc:  # noqa: BLE001
                return str(exc)
            in_types = [types.get(i) for i in node.input]
            reason = op.claim(attrs, in_types, opset, [ranks.get(i) for i in node.input])
            if reason:
                return f"{node.op_type}: {reason}"
    return None


def _function_reason(node, types, opset, shapes) -> str | None:
    """Why a function op's body is not claimed (its body nodes checked as any others)."""
    try:
        found = function_body(node, opset, [None] * len(node.input),
                              [types.get(n) if n else None for n in node.input],
                              [shapes.get(n) if n else None for n in node.input])
    except Exception as exc:  # noqa: BLE001  (the body cannot be built without the types memplan lowers with)
        return f"op {node.op_type}: its function body ({exc})"
    if found is None:
        return f"op {node.op_type}: no function body at opset {opset}"
    reason = _nodes_reason(found[0].node, {}, {}, opset)
    return f"{node.op_type} (function): {reason}" if reason else None


def _opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def _claimed_type(type_proto) -> bool:
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return True
    if kind == "sequence_type":
        return type_proto.sequence_type.elem_type.WhichOneof("value") == "tensor_type"
    if kind == "optional_type":
        return _claimed_type(type_proto.optional_type.elem_type)
    return False


def _elem_type_of(type_proto) -> int:
    """The element type of a tensor, sequence-of-tensor or optional type (0 if none)."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return type_proto.tensor_type.elem_type
    if kind == "sequence_type":
        return _elem_type_of(type_proto.sequence_type.elem_type)
    if kind == "optional_type":
        return _elem_type_of(type_proto.optional_type.elem_type)
    return 0


def _to_tensors(v):
    """An input as memplan takes it: a tensor, a list of tensors (a sequence) or None (an empty optional)."""
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return [_to_tensors(x) for x in v]
    return array_to_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)


def _signature(v):
    if v is None:
        return None
    if isinstance(v, list):
        return tuple(_signature(x) for x in v)
    return (str(v.dtype), tuple(v.shape))


class MemplanRep(BackendRep):
    """A compiled model; ``run(inputs)`` takes inputs in graph-input order (or a dict by name)."""

    def __init__(self, model, input_names: list[str], device: str = "CPU"):
        self.model = model
        self.input_names = input_names
        self.bound: set[str] = set()
        self.compiled: dict[Any, Any] = {}
        self.device = device
        self.output_types = [_elem_type_of(vi.type) for vi in model.graph.output]

    def _compile(self, tensors: dict[str, torch.Tensor], *, values_known: bool = True):
        """The compiled module for these inputs (compiled on first use) and the free inputs.

        ``values_known=False`` (prepare's placeholder data): an input found to decide shapes is
        recorded as bound and compilation waits for its real value."""
        while True:
            free = {k: v for k, v in tensors.items() if k not in self.bound}
            key = (tuple((k, _signature(v)) for k, v in free.items()),
                   tuple((k, tuple(tensors[k].shape), tensor_to_array(tensors[k]).tobytes()) for k in sorted(self.bound)))
            if key in self.compiled:
                return self.compiled[key], free
            try:
                graph = from_onnx(self.model, free, bind_inputs={k: tensors[k] for k in self.bound})
                structure = graph.onnx_outputs
                cm = memplan.compile(graph)
                cm.onnx_outputs = structure
            except NeedsConstantError as exc:
                if exc.input_name and exc.input_name not in self.bound:
                    self.bound.add(exc.input_name)
                    if not values_known:
                        return None, free
                    continue
                raise
            self.compiled[key] = cm
            return cm, free

    def run(self, inputs, **kwargs) -> list[np.ndarray]:
        if isinstance(inputs, dict):
            named = dict(inputs)
        else:
            if not isinstance(inputs, (list, tuple)):
                inputs = [inputs]
            if len(inputs) != len(self.input_names):
                raise InputMismatchError(f"the model takes {len(self.input_names)} inputs "
                                         f"({', '.join(self.input_names)}), got {len(inputs)}")
            named = dict(zip(self.input_names, inputs))
        tensors = {k: _to_tensors(v) for k, v in named.items()}
        cm, free = self._compile(tensors)
        flat = []
        for v in free.values():  # graph inputs follow the ONNX input order; a sequence's elements in turn
            if isinstance(v, list):
                flat.extend(v)
            elif v is not None:
                flat.append(v)
        out = cm(*flat)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        results, i = [], 0
        for shape, t in zip(cm.onnx_outputs, self.output_types):
            if shape == "empty":
                results.append(None)
            elif shape is None:
                results.append(tensor_to_array(outs[i], t))
                i += 1
            else:
                results.append([tensor_to_array(o, t) for o in outs[i:i + shape]])
                i += shape
        return results


class MemplanBackend(Backend):
    """The ONNX backend API over :func:`memplan.compile` (CPU, the PyTorch backend)."""

    @classmethod
    def claimed(cls, model) -> bool:
        """True when memplan claims every node of ``model`` (see :func:`claim_reason`)."""
        return claim_reason(model) is None

    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:
        return cls.claimed(model)

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> MemplanRep:
        model = load_model(model)
        inits = {i.name for i in model.graph.initializer}
        names = [vi.name for vi in model.graph.input if vi.name not in inits]
        rep = MemplanRep(model, names, device)
        example = {}
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            if not vi.type.HasField("tensor_type"):
                return rep  # a sequence or optional: its length or presence comes with the first run
            tt = vi.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if not tt.HasField("shape") or any(d is None for d in dims):
                return rep  # compiled at the first run, for the shapes it brings
            example[vi.name] = torch.zeros(dims, dtype=torch_dtype_of(tt.elem_type, f"input {vi.name!r}"))
        rep._compile(example, values_known=False)  # inputs whose values decide shapes: compiled at run
        return rep

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper().startswith("CPU")


prepare = MemplanBackend.prepare
run_model = MemplanBackend.run_model
supports_device = MemplanBackend.supports_device

__all__ = ["MemplanBackend", "MemplanRep", "claim_reason", "CLAIMED_ELEM_TYPES"]
