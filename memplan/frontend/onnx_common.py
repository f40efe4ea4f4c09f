"""What the ONNX importer and its op lowerings share: dtypes and tensor conversion, the node
builder (``b`` of a lowering), attributes, and the op table they register into.

:mod:`memplan.frontend.onnx` (``from_onnx``, loading and input shapes) drives an
import; :mod:`memplan.frontend.onnx_ops`, :mod:`memplan.frontend.onnx_nn` and
:mod:`memplan.frontend.onnx_composite` register their lowerings into :data:`ONNX_OPS`
with :func:`onnx_op`. All of them import this module and none of them imports this
module's users back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from memplan.errors import MemplanError, ModelLoadError, UnsupportedOpError
from memplan.frontend import onnx_unsigned as unsigned
from memplan.ir.graph import Graph, Node, Value
from memplan.ir.ops import flatten_outputs, infer_types, lookup
from memplan.ir.types import TensorType

MAX_TENSOR_BYTES = 2**53  # 8 PiB: a larger claim is no machine's tensor, and overflows size arithmetic

# ONNX TensorProto element type -> torch dtype (the types memplan can hold).
ONNX_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16, 6: torch.int32,
    7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 12: torch.uint32,
    13: torch.uint64, 14: torch.complex64, 15: torch.complex128, 16: torch.bfloat16,
    17: torch.float8_e4m3fn, 18: torch.float8_e4m3fnuz, 19: torch.float8_e5m2, 20: torch.float8_e5m2fnuz,
    24: torch.float8_e8m0fnu,
}
# The 4- and 2-bit types, held one element per byte in a carrier dtype (the ONNX file packs them two or
# four to a byte; memplan's plan counts the carrier's bytes, an upper bound). A signed or unsigned
# integer holds its value; FLOAT4E2M1 holds its 4-bit code (sign, 2 exponent bits, 1 mantissa bit).
CARRIED_DTYPES: dict[int, torch.dtype] = {21: torch.uint8, 22: torch.int8, 23: torch.uint8, 25: torch.uint8,
                                          26: torch.int8}
INT_RANGES = {21: (0, 15), 22: (-8, 7), 25: (0, 3), 26: (-2, 1)}  # the carried integer types' values
FLOAT4E2M1 = 23
FLOAT8_TYPES = frozenset({17, 18, 19, 20, 24})
NARROW_TYPES = FLOAT8_TYPES | frozenset(CARRIED_DTYPES)  # what only casts, quantization and layout ops take
UNSIGNED_WIDE = frozenset({4, 12, 13})  # uint16/32/64: aten lacks their arithmetic (computed widened)


def _ml_dtype(elem_type: int):
    """The ml_dtypes numpy type onnx uses for a narrow element type."""
    import ml_dtypes
    return {17: ml_dtypes.float8_e4m3fn, 18: ml_dtypes.float8_e4m3fnuz, 19: ml_dtypes.float8_e5m2,
            20: ml_dtypes.float8_e5m2fnuz, 24: ml_dtypes.float8_e8m0fnu, 21: ml_dtypes.uint4,
            22: ml_dtypes.int4, 23: ml_dtypes.float4_e2m1fn, 25: ml_dtypes.uint2, 26: ml_dtypes.int2}[elem_type]


def onnx_type_name(elem_type: int) -> str:
    """``1 -> 'FLOAT'``: the ONNX name of a TensorProto element type."""
    import onnx
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type {elem_type}"


def torch_dtype_of(elem_type: int, what: str) -> torch.dtype:
    """The torch dtype that holds an ONNX element type (a carrier for the 4- and 2-bit types);
    :class:`UnsupportedOpError` naming ``what`` if none."""
    if elem_type in CARRIED_DTYPES:
        return CARRIED_DTYPES[elem_type]
    if elem_type not in ONNX_DTYPES:
        known = list(ONNX_DTYPES) + list(CARRIED_DTYPES)
        raise UnsupportedOpError(f"{what} has ONNX type {onnx_type_name(elem_type)}, which memplan does not "
                                 f"support (supported: {', '.join(onnx_type_name(t) for t in known)})")
    return ONNX_DTYPES[elem_type]


def onnx_elem_type(dtype: torch.dtype) -> int:
    for k, v in ONNX_DTYPES.items():
        if v == dtype:
            return k
    raise KeyError(dtype)


def tensor_from_proto(proto, what: str = "tensor") -> torch.Tensor:
    """A TensorProto's data as a torch tensor (bfloat16 included)."""
    from onnx import numpy_helper
    dtype = torch_dtype_of(proto.data_type, what)
    try:
        array = numpy_helper.to_array(proto)
    except Exception as exc:  # external data missing, malformed raw data
        raise ModelLoadError(f"cannot read {what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return array_to_tensor(array, dtype)


_ML_TORCH = {"bfloat16": torch.bfloat16, "float8_e4m3fn": torch.float8_e4m3fn,
             "float8_e4m3fnuz": torch.float8_e4m3fnuz, "float8_e5m2": torch.float8_e5m2,
             "float8_e5m2fnuz": torch.float8_e5m2fnuz, "float8_e8m0fnu": torch.float8_e8m0fnu}
_ML_CARRIED = {"int4": torch.int8, "int2": torch.int8, "uint4": torch.uint8, "uint2": torch.uint8}


def array_to_tensor(array, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A numpy array or tensor as a torch tensor that owns its data. ml_dtypes arrays: bfloat16 and
    the 8-bit floats as torch's own dtypes, int4/uint4/int2/uint2 as their int8/uint8 carriers,
    float4_e2m1fn as its 4-bit codes in uint8."""
    if isinstance(array, torch.Tensor):
        return array if dtype is None else array.to(dtype)
    array = np.asarray(array)
    name = array.dtype.name
    if name in _ML_TORCH:
        t = torch.from_numpy(np.array(array, order="C").view(np.uint16 if name == "bfloat16" else np.uint8))
        t = t.view(_ML_TORCH[name])
        if dtype is not None and dtype != t.dtype:
            raise UnsupportedOpError(f"a {name} array cannot stand for {dtype}")
        return t
    elif name in _ML_CARRIED:
        t = torch.from_numpy(np.array(array, order="C").astype(np.int8 if name.startswith("int") else np.uint8))
    elif name == "float4_e2m1fn":
        t = torch.from_numpy(np.asarray(np.array(array, order="C").view(np.uint8) & 0x0F))
    elif array.dtype == object or array.dtype.kind in "SU":
        raise UnsupportedOpError("string tensors are not supported by memplan")
    else:
        t = torch.from_numpy(np.array(array, order="C"))
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


def tensor_to_array(t: torch.Tensor, elem_type: int | None = None) -> np.ndarray:
    """A torch tensor as a numpy array (bfloat16 and the 8-bit floats as ml_dtypes arrays).
    ``elem_type``: the ONNX element type ``t`` holds, for the carried 4- and 2-bit types (an int8 or
    uint8 carrier becomes an ml_dtypes int4/uint4/int2/uint2 or float4_e2m1fn array)."""
    t = t.detach().cpu().contiguous()
    if elem_type in CARRIED_DTYPES:
        if elem_type == FLOAT4E2M1:
            return t.to(torch.uint8).numpy().view(_ml_dtype(elem_type)).copy()
        return t.numpy().astype(_ml_dtype(elem_type))
    for name, dt in _ML_TORCH.items():  # bfloat16 and the 8-bit floats: numpy holds them as ml_dtypes
        if t.dtype == dt:
            import ml_dtypes
            bits = torch.int16 if dt == torch.bfloat16 else torch.uint8
            return t.view(bits).numpy().view(getattr(ml_dtypes, name)).copy()
    return t.numpy().copy()


# ---------------------------------------------------------------- errors
class NeedsConstantError(UnsupportedOpError):
    """A lowering needs the value of an input that is only known at run time.

    ``input_name`` is the ONNX graph input it depends on, when it is one
    (bind it with ``from_onnx(..., bind_inputs={name: array})``).
    """

    def __init__(self, message: str, *, op: str = "", node: str = "", input_name: str | None = None):
        super().__init__(message, op=op, node=node)
        self.input_name = input_name


# ---------------------------------------------------------------- sequences and optionals
class OnnxSequence(list):
    """An ONNX sequence: a list of tensors (values or constants) whose length is known at import time
    (memplan plans each element as a tensor of its own). ``elem_type``: the ONNX element type."""

    def __init__(self, items=(), elem_type: int = 0):
        super().__init__(items)
        self.elem_type = elem_type


class EmptyOptional:
    """An ONNX optional holding nothing (a present optional is the value it holds)."""

    def __init__(self, kind: str = "tensor"):
        self.kind = kind

    def __repr__(self) -> str:
        return f"EmptyOptional({self.kind})"


def is_tensor_like(x) -> bool:
    """A tensor value or constant (not a sequence, not an empty optional)."""
    return isinstance(x, torch.Tensor) or isinstance(x, Value)


# ---------------------------------------------------------------- builder
def is_const(x) -> bool:
    return isinstance(x, torch.Tensor)


def shape_of(x) -> tuple[int, ...]:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(x.type.shape)


def dtype_of(x) -> torch.dtype:
    return x.dtype if isinstance(x, torch.Tensor) else x.type.torch_dtype


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, list):
        return [_map_tensors(o, fn) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _nbytes(shape, dtype: torch.dtype) -> int:
    n = torch.empty((), dtype=dtype).element_size()
    for d in shape:
        n *= int(d)
    return n


def _size_hint(obj) -> int:
    """A cheap guess at the elements an op on ``obj`` (constant arguments) may produce: the
    broadcast size of its tensors, the largest size list (product or entry) and int."""
    shapes, hint = [], 0
    stack = [obj]
    while stack:
        a = stack.pop()
        if isinstance(a, torch.Tensor):
            shapes.append(tuple(a.shape))
            hint = max(hint, a.numel())
        elif isinstance(a, (list, tuple)):
            if a and all(isinstance(d, int) and not isinstance(d, bool) for d in a):
                product = 1
                for d in a:
                    product *= abs(d)
                hint = max(hint, product, *(abs(d) for d in a))
            else:
                stack.extend(a)
        elif isinstance(a, dict):
            stack.extend(a.values())
        elif isinstance(a, int) and not isinstance(a, bool):
            hint = max(hint, abs(a))
    try:
        broadcast = 1
        for d in torch.broadcast_shapes(*shapes):
            broadcast *= d
        hint = max(hint, broadcast)
    except RuntimeError:
        pass
    return hint


def _folded_bytes(impl, args, kwargs, limit: int) -> int:
    """Bytes the result of folding ``impl(*args, **kwargs)`` would take: 0 when a cheap guess
    says it is small against ``limit`` (most folds: shape arithmetic), else from a run on meta
    tensors."""
    if _size_hint((args, kwargs)) * 16 <= limit:
        return 0
    try:
        meta_args, meta_kwargs = _map_tensors((args, kwargs), lambda t: torch.empty_like(t, device="meta"))
        result = impl(*meta_args, **meta_kwargs)
    except Exception:  # no meta kernel: fold as before (the real run raises if the op rejects them)
        return 0
    outs = [result] if isinstance(result, torch.Tensor) else flatten_outputs(result)
    return sum(t.numel() * t.element_size() for t in outs if isinstance(t, torch.Tensor))


def _tensor_bytes(obj) -> int:
    """Bytes of the distinct constant tensors in ``obj``: what the file already holds. Folding a
    weight (a transpose, a cast) takes as much again and is what saves work at run time; a fold
    much larger than its inputs (Expand, Tile, ConstantOfShape of a claimed size) is what the
    importer's fold limit bounds."""
    seen, total, stack = set(), 0, [obj]
    while stack:
        a = stack.pop()
        if isinstance(a, torch.Tensor):
            if id(a) not in seen:
                seen.add(id(a))
                total += a.numel() * a.element_size()
        elif isinstance(a, (list, tuple)):
            stack.extend(a)
        elif isinstance(a, dict):
            stack.extend(a.values())
    return total


def _has_value(obj) -> bool:
    if isinstance(obj, Value):
        return True
    if isinstance(obj, (list, tuple)):
        return any(_has_value(o) for o in obj)
    if isinstance(obj, dict):
        return any(_has_value(o) for o in obj.values())
    return False


class Importer:
    """State of one import: the graph, constants, and the ONNX-name environment.

    ``fold_limit()`` is the most bytes a constant fold may produce beyond its inputs (see
    :func:`memplan.frontend.onnx.fold_limit`); a larger result stays a node."""

    def __init__(self, graph: Graph, opset: int, onnx_types: dict, *, fold_limit: Callable[[], int]):
        self.graph = graph
        self.opset = opset
        self.fold_limit = fold_limit
        # lower_node(importer, node): the op table's driver (memplan.frontend.onnx_ops), which bodies of
        # control-flow and function ops call back into; set by whoever drives the import
        self.lower_node: Callable | None = None
        self.onnx_types = onnx_types  # onnx value name -> (elem_type, dims or None)
        self.env: dict[str, Any] = {}  # onnx name -> Value | torch.Tensor (constant)
        self.const_params: dict[int, tuple[torch.Tensor, Value]] = {}
        self.const_names: dict[int, str] = {}
        self.input_names: dict[str, str] = {}  # IR value name -> onnx graph input name
        self.keep_alive: list[torch.Tensor] = []  # named folded constants (their ids key const_names)
        # onnx value name -> ONNX element type: which type an int8/uint8 tensor carries (INT4, FLOAT4E2M1, ...)
        self.elem_types: dict[str, int] = {}

    def materialize(self, t: torch.Tensor, hint: str = "const") -> Value:
        """The param holding constant ``t`` (one param per constant tensor object)."""
        hit = self.const_params.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        data = t.detach().contiguous()
        value = self.graph.add_param(self.const_names.get(id(t), hint), TensorType.of(data), data)
        self.const_params[id(t)] = (t, value)
        return value


class NodeBuilder:
    """What a lowering function sees: the ONNX node, its attributes, and ``call`` to emit IR."""

    def __init__(self, importer: Importer, node, attrs: dict):
        self.importer = importer
        self.graph = importer.graph
        self.node = node
        self.attrs = attrs
        self.opset = importer.opset
        self.op_type = node.op_type
        self.name = node.name or (node.output[0] if node.output else node.op_type)
        self.created: list[Node] = []
        self.out_elem_types: dict[int, int] = {}  # output index -> ONNX element type, set by casts
        self.fold = True  # False: every call becomes a node (a quantized weight dequantized at run time)
        hint = node.output[0] if node.output and node.output[0] else node.op_type.lower()
        self._hint = hint

    def elem_type(self, i: int) -> int | None:
        """The ONNX element type of input ``i`` (None when the input is absent or not known)."""
        if i >= len(self.node.input) or not self.node.input[i]:
            return None
        return self.importer.elem_types.get(self.node.input[i])

    # -- attributes --------------------------------------------------------
    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def fail(self, message: str) -> UnsupportedOpError:
        """An :class:`UnsupportedOpError` for this node (an attribute value memplan cannot lower)."""
        return UnsupportedOpError(f"ONNX op {self.op_type} (node {self.name!r}): {message}",
                                  op=f"onnx::{self.op_type}", node=self.name)

    # -- constants -----------------------------------------------------------
    def const(self, x, what: str = "input") -> torch.Tensor:
        """The value of ``x`` if it is a constant; :class:`NeedsConstantError` if not."""
        if x is None:
            raise self.fail(f"{what} is missing")
        if is_const(x):
            return x
        onnx_name = self.importer.input_names.get(x.name) or self._input_behind(x)
        hint = (f"; bind graph input {onnx_name!r} to a value (bind_inputs) or make it an initializer"
                if onnx_name else "")
        raise NeedsConstantError(
            f"ONNX op {self.op_type} (node {self.name!r}) needs its {what} as a constant, but it is "
            f"computed at run time (%{x.name}); memplan plans static shapes{hint}",
            op=f"onnx::{self.op_type}", node=self.name, input_name=onnx_name)

    def _input_behind(self, x: Value) -> str | None:
        """The first graph input (ONNX name) that value ``x`` is computed from."""
        seen, stack = set(), [x]
        while stack:
            v = stack.pop()
            if v.name in seen:
                continue
            seen.add(v.name)
            if v.name in self.importer.input_names:
                return self.importer.input_names[v.name]
            if v.producer is not None:
                stack.extend(reversed(v.producer.inputs))
        return None

    def ints(self, x, what: str = "input") -> list[int]:
        return [int(v) for v in self.const(x, what).reshape(-1).tolist()]

    def scalar(self, x, what: str = "input"):
        t = self.const(x, what)
        if t.numel() != 1:
            raise self.fail(f"{what} must hold one value, got shape {list(t.shape)}")
        return t.reshape(()).item()

    # -- emission ------------------------------------------------------------
    def call(self, op: str, *args, **kwargs):
        """Apply aten/memplan op ``op``: folded now if every tensor argument is a constant,
        else appended to the graph. Returns a Value/tensor, or a tuple for multi-output ops."""
        if unsigned.needs_care(op, args):
            return unsigned.call(self, op, args, kwargs)  # aten lacks uint16/32/64 arithmetic
        opdef = lookup(op, node=self.name, source=self.name)
        fold = False
        if self.fold and not _has_value((args, kwargs)):  # all tensor arguments constant: folded unless too large
            limit = self.importer.fold_limit()
            fold = _folded_bytes(opdef.impl, args, kwargs, limit) <= max(limit, _tensor_bytes((args, kwargs)))
        if fold:
            result = opdef.impl(*args, **kwargs)
            outs = [result] if isinstance(result, torch.Tensor) else flatten_outputs(result)
            self._name_folded(op, (args, kwargs), outs)
            return result if isinstance(result, torch.Tensor) else tuple(outs)
        args = _map_tensors(args, self.importer.materialize)
        kwargs = _map_tensors(kwargs, self.importer.materialize)
        probe = Node("probe", op, tuple(args), dict(kwargs), (), self.name, f"onnx::{self.op_type}")
        try:
            types = infer_types(probe)
        except UnsupportedOpError:
            raise
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise self.fail(f"{op} rejects its arguments ({text})") from None
        short = op.split(".")[1] if op.count(".") >= 2 else op.split(".")[-1]
        outs = self.graph.add_node(op, args, kwargs, types, name=f"{self._hint}_{short}", source=self.name,
                                   source_op=f"onnx::{self.op_type}")
        self.created.append(outs[0].producer)
        schema = getattr(opdef.impl, "_schema", None)
        single = schema is not None and len(schema.returns) == 1 and \
            not str(schema.returns[0].type).startswith(("List", "Tensor[]"))
        if single or (schema is None and len(outs) == 1 and not getattr(opdef.impl, "returns_sequence", False)):
            return outs[0]
        return tuple(outs)

    def _name_folded(self, op: str, args, outs) -> None:
        """Name a folded constant after the named constant it derives from (``fc.weight_permute``)."""
        names = self.importer.const_names
        source = None
        stack = [args]
        while stack and source is None:
            a = stack.pop(0)
            if isinstance(a, torch.Tensor):
                source = names.get(id(a))
            elif isinstance(a, (list, tuple)):
                stack.extend(a)
            elif isinstance(a, dict):
                stack.extend(a.values())
        if source is None:
            return
        short = op.split(".")[1] if op.count(".") >= 2 else op
        for t in outs:
            names.setdefault(id(t), f"{source}_{short}")
            self.importer.keep_alive.append(t)

    def cast(self, x, dtype: torch.dtype):
        """``x`` converted to ``dtype`` (no node if it already has it)."""
        if dtype_of(x) == dtype:
            return x
        return self.call("aten._to_copy.default", x, dtype=dtype)

    def reshape(self, x, shape):
        shape = [int(s) for s in shape]
        if list(shape_of(x)) == shape:
            return x
        return self.call("aten.reshape.default", x, shape)

    def full(self, shape, value, dtype: torch.dtype):
        """A constant tensor: folded at import time, or, where it would take more than
        the importer's fold limit in bytes, the one value expanded to ``shape`` by a node (a view that
        holds no bytes; the importer never allocates what a file merely claims)."""
        shape = [int(s) for s in shape]
        if any(d < 0 for d in shape):
            raise self.fail(f"a constant of shape {shape}: dims must be non-negative")
        self.check_size(shape, dtype, "the constant", limit=MAX_TENSOR_BYTES)
        if _nbytes(shape, dtype) <= self.importer.fold_limit():
            return torch.full(tuple(shape), value, dtype=dtype)
        return self.call("aten.expand.default", torch.full((), value, dtype=dtype), shape)

    def check_size(self, shape, dtype: torch.dtype, what: str, limit: int | None = None) -> None:
        """Raise :class:`UnsupportedOpError` before building a constant of ``shape`` larger than
        ``limit`` bytes (default: the importer's fold limit) at import time (a file's claim must not exhaust
        this host's memory)."""
        limit = self.importer.fold_limit() if limit is None else limit
        nbytes = _nbytes(shape, dtype)
        if nbytes > limit:
            raise self.fail(f"{what} would hold {list(shape)} {dtype} ({nbytes} bytes), more than the "
                            f"{limit} bytes memplan computes while importing")


# ---------------------------------------------------------------- attributes
def attributes(node) -> dict:
    """ONNX node attributes as Python values (strings decoded, tensors as torch tensors)."""
    import onnx
    out = {}
    for a in node.attribute:
        if a.ref_attr_name:
            raise UnsupportedOpError(f"node {node.name!r} ({node.op_type}) has an attribute reference "
                                     f"{a.name}={a.ref_attr_name}; inline the model's functions first")
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            out[a.name] = a  # a sub-graph; op lowerings that take one decide
            continue
        value = onnx.helper.get_attribute_value(a)
        if a.type == onnx.AttributeProto.FLOAT:
            value = _f32(value)
        elif a.type == onnx.AttributeProto.FLOATS:
            value = [_f32(v) for v in value]
        elif isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, onnx.TensorProto):
            value = tensor_from_proto(value, f"attribute {a.name} of node {node.name!r}")
        elif isinstance(value, list):
            value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        out[a.name] = value
    return out


def _f32(v: float) -> float:
    """An ONNX float attribute (float32) as the shortest Python float that rounds to it (1e-05, not
    9.999999747378752e-06)."""
    return float(str(np.float32(v)))


def check_node_types(importer: Importer, node, results: list) -> None:
    """Compare lowered output types with ONNX shape inference; raise on a static mismatch."""
    for name_, r in zip(node.output, results):
        if not name_ or r is None or name_ not in importer.onnx_types or not is_tensor_like(r):
            continue
        elem, dims = importer.onnx_types[name_]
        ours_dtype = dtype_of(r)
        want = CARRIED_DTYPES.get(elem, ONNX_DTYPES.get(elem))
        if want is not None and want != ours_dtype:
            raise MemplanError(f"lowering ONNX op {node.op_type} (node {node.name!r}) gives output {name_!r} dtype "
                               f"{ours_dtype}, ONNX type inference says {onnx_type_name(elem)}")
        if dims is not None and list(dims) != list(shape_of(r)):
            raise MemplanError(f"lowering ONNX op {node.op_type} (node {node.name!r}) gives output {name_!r} shape "
                               f"{list(shape_of(r))}, ONNX shape inference says {dims}")


# ---------------------------------------------------------------- the op table
@dataclass(frozen=True)
class OnnxOp:
    name: str
    lower: Callable
    claim: Callable | None = None


ONNX_OPS: dict[str, OnnxOp] = {}


def onnx_op(*names: str, claim: Callable | None = None):
    """Register ``fn`` as the lowering of ONNX op types ``names``."""
    def wrap(fn):
        for n in names:
            ONNX_OPS[n] = OnnxOp(n, fn, claim)
        return fn
    return wrap


# ONNX element types the conformance backend claims (no uint16/32/64: aten lacks most kernels; no complex,
# float8, int4, strings); op ``claim`` predicates read it too.
CLAIMED_ELEM_TYPES = frozenset({1, 2, 3, 5, 6, 7, 9, 10, 11, 16})


def norm_axis(axis: int, rank: int, *, inclusive: bool = False) -> int:
    """``axis`` in ``[-rank, rank)`` (``[-rank, rank]`` with ``inclusive``, as Flatten takes it) as a
    non-negative axis; a ValueError (a typed error naming the node, raised by ``lower_node``) for any
    other: ONNX and onnxruntime reject the model."""
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise TypeError(f"axis {axis!r} is not an integer")
    if not -max(rank, 1) <= axis < max(rank, 1) + int(inclusive):
        raise ValueError(f"axis {axis} is out of range for a rank-{rank} input")
    return axis + rank if axis < 0 else axis


def rank_of(x) -> int:
    return len(shape_of(x))


__all__ = ["ONNX_DTYPES", "MAX_TENSOR_BYTES", "CLAIMED_ELEM_TYPES", "onnx_type_name", "torch_dtype_of",
           "onnx_elem_type", "tensor_from_proto", "array_to_tensor", "tensor_to_array", "NeedsConstantError",
           "is_const", "shape_of", "dtype_of", "Importer", "NodeBuilder", "attributes", "check_node_types",
           "OnnxOp", "ONNX_OPS", "onnx_op", "norm_axis", "rank_of", "OnnxSequence", "EmptyOptional",
           "is_tensor_like"]
