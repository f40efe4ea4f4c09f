"""ONNX function ops: an op memplan has no lowering of its own for, whose schema defines it as a
function of other ops (``LinearAttention``, ``RotaryEmbedding``, ``SwiGLU``, ``AffineGrid``,
``CausalConvWithState``, ...), is lowered through that function body, as onnxruntime expands
function ops it has no kernel for.

The body is the schema's function for the model's opset (a context-dependent one is built for the
node's attributes and input types). Its attribute references take the node's attributes (an
attribute the node leaves out takes the schema's default), and its values live in a scope of
their own, so the body's internal names never meet the graph's.
"""
from __future__ import annotations

from collections import ChainMap

import onnx
from onnx import defs, helper

from memplan.frontend.onnx_common import ONNX_OPS, dtype_of, is_const, onnx_elem_type, shape_of


def _schema(op_type: str, opset: int, domain: str = ""):
    try:
        return defs.get_schema(op_type, opset, domain)
    except defs.SchemaError:
        return None


def has_function(op_type: str, opset: int) -> bool:
    """Does the schema of ``op_type`` at ``opset`` define it as a function (plain or context-dependent)?"""
    s = _schema(op_type, opset)
    return s is not None and (s.has_function or s.has_context_dependent_function)


def _with_defaults(node, schema):
    full = onnx.NodeProto()
    full.CopyFrom(node)
    given = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        if name not in given and attr.default_value is not None and attr.default_value.name:
            full.attribute.append(attr.default_value)
    return full


def _type_proto(x, elem_type: int | None):
    elem = elem_type or onnx_elem_type(dtype_of(x))
    return helper.make_tensor_type_proto(elem, list(shape_of(x)))


def function_body(node, opset: int, inputs: list, elem_types: list, shapes: list | None = None):
    """The FunctionProto that defines ``node`` and the node with its defaults filled in (None when its
    schema defines none). ``inputs``: the node's values (None where absent or not known: a
    context-dependent body is then built from ``elem_types`` and, where given, ``shapes``: dims, None
    for an unknown dim or shape)."""
    schema = _schema(node.op_type, opset, node.domain)
    if schema is None:
        return None
    full = _with_defaults(node, schema)
    if schema.has_function:
        versions = [v for v in schema.function_opset_versions if v <= opset]
        text = schema.get_function_with_opset_version(max(versions)) if versions else None
    elif schema.has_context_dependent_function:
        versions = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
        if not versions:
            return None
        shapes = shapes or [None] * len(inputs)
        types = [(_type_proto(x, t) if x is not None else helper.make_tensor_type_proto(t, d) if t
                  else onnx.TypeProto()).SerializeToString() for x, t, d in zip(inputs, elem_types, shapes)]
        text = schema.get_context_dependent_function_with_opset_version(max(versions), full.SerializeToString(),
                                                                           types)
    else:
        return None
    if not text:
        return None
    proto = onnx.FunctionProto()
    proto.ParseFromString(text)
    return proto, full


def instantiate(function, node) -> list:
    """The function's nodes with its attribute references replaced by ``node``'s attributes."""
    given = {a.name: a for a in node.attribute}
    out = []
    for inner in function.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        del copy.attribute[:]
        for a in inner.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name in given:
                    b = onnx.AttributeProto()
                    b.CopyFrom(given[a.ref_attr_name])
                    b.name = a.name
                    copy.attribute.append(b)
                continue  # left out: the inner op's own default applies
            copy.attribute.append(a)
        out.append(copy)
    return out


def lower_function_op(importer, node, inputs: list) -> list:
    """Lower ``node`` through its schema's function body; its outputs (values or constants)."""
    from memplan.frontend.onnx_loops import Scope
    elem_types = [importer.elem_types.get(n) if n else None for n in node.input]
    found = function_body(node, importer.opset, inputs, elem_types)
    if found is None:
        return None
    function, full = found
    saved, saved_types, saved_elems = importer.env, importer.onnx_types, importer.elem_types
    scope = Scope(saved, lambda name, value: value)
    absent = set()
    for name, x in zip(function.input, list(inputs) + [None] * (len(function.input) - len(inputs))):
        if x is not None:
            scope[name] = x
        else:
            absent.add(name)  # an optional input the node leaves out: absent inside the body too
    importer.env = scope
    importer.onnx_types = {}  # the body's names are its own: the graph's inferred types do not describe them
    importer.elem_types = ChainMap({n: t for n, t in zip(function.input, elem_types) if t}, {})
    try:
        for inner in instantiate(function, full):
            inner.input[:] = ["" if n in absent else n for n in inner.input]
            if inner.domain in ("", "ai.onnx") and inner.op_type not in ONNX_OPS and not has_function(
                    inner.op_type, importer.opset):
                from memplan.errors import UnsupportedOpError
                raise UnsupportedOpError(f"ONNX op {node.op_type} (node {node.name!r}) is defined by a function "
                                         f"that uses {inner.op_type}, which memplan does not lower",
                                         op=f"onnx::{node.op_type}", node=node.name)
            importer.lower_node(importer, inner)
        results = []
        for name in function.output:
            results.append(scope[name] if name in dict.keys(scope) else None)
        return results
    finally:
        importer.env, importer.onnx_types, importer.elem_types = saved, saved_types, saved_elems


__all__ = ["function_body", "has_function", "instantiate", "lower_function_op"]
