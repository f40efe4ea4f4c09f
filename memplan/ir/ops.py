"""The op registry: per op, its kind, reference semantics, shape inference and cost.

Ops are named like torch's op overloads (``aten.addmm.default``); the
reference implementation of an ``aten.*`` op is the aten op itself, so the
emitted PyTorch code calls exactly what the registry describes. Ops that
aten lacks (ONNX-only semantics, fused groups) are registered under
``memplan.*`` with a Python reference implementation in torch.

Kinds follow TVM's fuse-pattern lattice: ``elementwise`` (same shape in and
out), ``broadcast``, ``injective`` (data movement: views, concat, gather),
``reduction``, ``opaque`` (matmul, conv, attention, anything else).
Shape/dtype inference runs the reference implementation on meta tensors,
unless an op registers its own rule.

:class:`OpKind`, :class:`OpDef` and :func:`register_op` live in
:mod:`memplan.ir.opdef` (re-exported here). The IR's own ``memplan.*`` ops
(``memplan.copy``, ``memplan.group``, ``memplan.loop``) are registered by
modules this one imports; a backend registers its kernel dialect
(:mod:`memplan.backends.pytorch_ops`).
"""
from __future__ import annotations

import math

import torch

from memplan.errors import UnsupportedOpError
from memplan.ir import planning_ops, regions  # noqa: F401  (register the memplan.* ops of the IR itself)
from memplan.ir.graph import Node, Value, map_values
from memplan.ir.opdef import _CUSTOM, OpDef, OpKind, _numel, conv_flops, register_op  # noqa: F401  (re-exported)
from memplan.ir.types import TensorType


# ---------------------------------------------------------------- aten tables
# Names are aten packet names; every overload of a listed packet is supported
# unless noted. These are the ops Core ATen decompositions of real models
# produce (GPT-2, BERT, Llama, ViT, ResNet, UNet-style CNNs) plus what the
# ONNX importer lowers to.
_ELEMENTWISE = """
abs acos acosh asin asinh atan atanh bitwise_not ceil clamp clamp_min clamp_max clone cos cosh
elu erf erfinv exp exp2 expm1 floor gelu hardsigmoid hardswish hardtanh isinf isnan leaky_relu
lift_fresh_copy log log10 log1p log2 logical_not mish neg reciprocal relu round rsqrt selu
sigmoid sign silu sin sinh softplus sqrt tan tanh trunc _to_copy to celu nan_to_num
bitwise_left_shift bitwise_right_shift frac logit square threshold
""".split()
_BROADCAST = """
add sub rsub mul div pow maximum minimum fmax fmin where eq ne lt le gt ge logical_and logical_or
logical_xor bitwise_and bitwise_or bitwise_xor masked_fill remainder fmod atan2 floor_divide
copysign hypot prelu xlogy lerp addcmul addcdiv
""".split()
_INJECTIVE = """
cat stack constant_pad_nd reflection_pad1d reflection_pad2d reflection_pad3d replication_pad1d
replication_pad2d replication_pad3d index_select gather embedding index repeat flip roll tril triu
upsample_nearest2d upsample_nearest1d upsample_nearest3d
upsample_bilinear2d upsample_linear1d upsample_trilinear3d upsample_bicubic2d _upsample_nearest_exact2d
pixel_shuffle pixel_unshuffle full_like zeros_like ones_like empty_like fill scalar_tensor full
zeros ones arange scatter scatter_add scatter_reduce index_put slice_scatter select_scatter
masked_scatter tile repeat_interleave grid_sampler_2d grid_sampler_3d affine_grid_generator col2im im2col _unsafe_index
empty empty_strided new_empty new_full new_zeros new_ones iota narrow_copy
""".split()
_VIEWS = """
view _unsafe_view reshape permute transpose t expand slice select squeeze unsqueeze alias
as_strided detach narrow unfold diagonal view_as movedim split split_with_sizes unbind chunk
tensor_split
""".split()
_REDUCTION = """
sum mean amax amin max min argmax argmin prod var var_mean std any all logsumexp
_softmax _log_softmax softmax log_softmax native_layer_norm native_group_norm
_native_batch_norm_legit_no_training _native_batch_norm_legit native_batch_norm
layer_norm group_norm batch_norm norm linalg_vector_norm cumsum cumprod topk sort
_safe_softmax cummax cummin rms_norm _fused_rms_norm
""".split()
_OPAQUE = """
mm bmm addmm baddbmm matmul linear convolution conv2d conv1d _convolution
scaled_dot_product_attention _scaled_dot_product_flash_attention_for_cpu
_scaled_dot_product_attention_math _scaled_dot_product_efficient_attention
max_pool2d_with_indices max_pool1d_with_indices max_pool3d_with_indices max_pool2d
avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
_adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool2d adaptive_max_pool1d
einsum dot vdot mv outer _weight_norm_interface lstm gru linalg_det
""".split()
# what AOTAutograd's joint graphs add for training (memplan.backend): the backward of each op above,
# losses, and the functional batch norm (it returns the updated running statistics)
_BACKWARD_ELEMENTWISE = """
threshold_backward gelu_backward silu_backward sigmoid_backward tanh_backward hardswish_backward
hardsigmoid_backward elu_backward leaky_relu_backward softplus_backward hardtanh_backward mish_backward
""".split()
_BACKWARD_OPAQUE = """
native_layer_norm_backward _softmax_backward_data _log_softmax_backward_data nll_loss_forward
nll_loss_backward nll_loss2d_forward nll_loss2d_backward mse_loss mse_loss_backward embedding_dense_backward
convolution_backward max_pool2d_with_indices_backward avg_pool2d_backward _adaptive_avg_pool2d_backward
native_batch_norm_backward native_group_norm_backward _native_batch_norm_legit_functional
_scaled_dot_product_flash_attention_for_cpu_backward _scaled_dot_product_efficient_attention_backward
binary_cross_entropy binary_cross_entropy_backward binary_cross_entropy_with_logits smooth_l1_loss
smooth_l1_loss_backward huber_loss huber_loss_backward _fused_rms_norm_backward select_backward slice_backward
index_add _safe_softmax_backward rand randn bernoulli native_dropout native_dropout_backward
""".split()
# backward ops with an output_mask: a gradient the mask turns off is None (an empty tensor in the IR),
# and their out= forms refuse an empty out tensor, so they allocate their results
MASKED_OUTPUTS = frozenset({"aten.convolution_backward.default", "aten.native_layer_norm_backward.default",
                            "aten.native_batch_norm_backward.default", "aten.native_group_norm_backward.default",
                            "aten._fused_rms_norm_backward.default"})
# aten ops memplan refuses, with the reason users see.
_REFUSED = {
    "nonzero": "its output shape depends on the data",
    "unique": "its output shape depends on the data",
    "_unique2": "its output shape depends on the data",
    "masked_select": "its output shape depends on the data",
    "item": "it returns a Python scalar",
    "_local_scalar_dense": "it reads a tensor value into Python (data-dependent control flow)",
    "rand": "it is random (plans must be deterministic)",
    "randn": "it is random (plans must be deterministic)",
    "bernoulli": "it is random (plans must be deterministic)",
    "native_dropout": "it is random; export the model in eval mode",
    "copy_": "it mutates an input in place",
}

ATEN_KINDS: dict[str, OpKind] = {}
for _names, _kind in ((_ELEMENTWISE, OpKind.ELEMENTWISE), (_BROADCAST, OpKind.BROADCAST),
                      (_INJECTIVE, OpKind.INJECTIVE), (_VIEWS, OpKind.INJECTIVE),
                      (_REDUCTION, OpKind.REDUCTION), (_OPAQUE, OpKind.OPAQUE),
                      (_BACKWARD_ELEMENTWISE, OpKind.BROADCAST), (_BACKWARD_OPAQUE, OpKind.OPAQUE)):
    for _n in _names:
        ATEN_KINDS[_n] = _kind
ATEN_VIEWS = frozenset(_VIEWS) - {"reshape"}  # reshape may copy


# ---------------------------------------------------------------- flop rules
def _mm_flops(node: Node) -> int:
    out = node.outputs[0].type
    a = node.inputs[-2].type if node.op.startswith(("aten.addmm", "aten.baddbmm")) else node.inputs[0].type
    k = a.shape[-1]
    n = _numel(node.outputs[0])
    return 2 * n * k if isinstance(k, int) else 0


def _sdpa_flops(node: Node) -> int:
    q, k = node.inputs[0].type, node.inputs[1].type
    if not (q.is_static and k.is_static):
        return 0
    batch = math.prod(q.shape[:-2])
    return 4 * batch * q.shape[-2] * k.shape[-2] * q.shape[-1]


_FLOPS = {
    "mm": _mm_flops, "bmm": _mm_flops, "addmm": _mm_flops, "baddbmm": _mm_flops, "matmul": _mm_flops,
    "convolution": conv_flops, "_convolution": conv_flops, "conv2d": conv_flops, "conv1d": conv_flops,
    "scaled_dot_product_attention": _sdpa_flops,
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa_flops,
}


# ---------------------------------------------------------------- inference overrides
# Ops whose meta kernel disagrees with the CPU kernel that really runs.
def _bn_no_training_types(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    return [x, TensorType(x.dtype, (0,)), TensorType(x.dtype, (0,))]


def _layer_norm_types(node: Node) -> list[TensorType]:
    """The CPU kernel gives mean and rstd in the input's dtype (bfloat16 too); the meta kernel says float32."""
    x, normalized = node.inputs[0].type, node.args[1]
    stats = tuple(x.shape[: x.rank - len(normalized)]) + (1,) * len(normalized)
    return [x, TensorType(x.dtype, stats), TensorType(x.dtype, stats)]


_INFER = {"_native_batch_norm_legit_no_training": _bn_no_training_types, "native_layer_norm": _layer_norm_types}


# ---------------------------------------------------------------- registry
# memplan.* ops are in memplan.ir.opdef._CUSTOM (registered by memplan.ir.planning_ops, memplan.ir.regions and a
# backend's kernel dialect such as memplan.backends.pytorch_ops); aten ops are
# looked up on first use.
_CACHE: dict[str, OpDef] = {}


def resolve_aten(name: str):
    """The ``torch.ops`` overload object for ``aten.<packet>.<overload>``."""
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != "aten":
        raise KeyError(name)
    packet = getattr(torch.ops.aten, parts[1])
    return getattr(packet, parts[2])


# the backends' kernel dialects (memplan.* ops a backend registers when imported), loaded on the first
# lookup of a memplan.* op the registry does not know: planned IR read without importing the backend
# (``memplan show model.mir``) still knows them
_DIALECTS_LOADED = False


def _load_dialects() -> bool:
    """Import the known dialects once; True if that registered anything new."""
    global _DIALECTS_LOADED
    if _DIALECTS_LOADED:
        return False
    _DIALECTS_LOADED = True
    import importlib
    before = len(_CUSTOM)
    importlib.import_module("memplan.backends.pytorch_ops")  # the known dialects
    return len(_CUSTOM) > before


RANDOM_PACKETS = frozenset({"rand", "randn", "bernoulli", "native_dropout"})  # aten packets that draw
_RANDOM_ALLOWED = [0]  # depth of allow_random() contexts


class allow_random:
    """Within it, random ops are supported (opaque, never folded, fused or duplicated): the graphs
    of a training step, where a dropout mask is drawn once in the forward and saved for the
    backward (``memplan.training``). Elsewhere a plan must be deterministic and they are refused."""

    def __enter__(self):
        _RANDOM_ALLOWED[0] += 1
        return self

    def __exit__(self, *exc):
        _RANDOM_ALLOWED[0] -= 1
        return False


def lookup(name: str, *, node: str = "", source: str = "") -> OpDef:
    """The :class:`OpDef` of ``name``; raises :class:`UnsupportedOpError` naming the op and node."""
    if not _RANDOM_ALLOWED[0] and name.startswith("aten.") and name.split(".")[1] in RANDOM_PACKETS:
        where = f" (node {node}{', ' + source if source else ''})" if node else ""
        raise UnsupportedOpError(f"op {name}{where} is not supported: {_REFUSED[name.split('.')[1]]}", op=name,
                                 node=node)
    if name in _CACHE:
        return _CACHE[name]
    if name in _CUSTOM:
        return _CUSTOM[name]
    if name.startswith("memplan.") and _load_dialects():
        return lookup(name, node=node, source=source)
    where = f" (node {node}{', ' + source if source else ''})" if node else ""
    parts = name.split(".")
    packet = parts[1] if len(parts) >= 2 and parts[0] == "aten" else None
    if packet is None:
        raise UnsupportedOpError(f"unknown op {name!r}{where}; memplan supports aten.* ops and "
                                 f"{', '.join(sorted(_CUSTOM)) or 'no custom ops'}", op=name, node=node)
    if packet in _REFUSED and not (packet in RANDOM_PACKETS and _RANDOM_ALLOWED[0]):
        raise UnsupportedOpError(f"op {name}{where} is not supported: {_REFUSED[packet]}", op=name, node=node)
    if packet not in ATEN_KINDS:
        raise UnsupportedOpError(
            f"op {name}{where} is not supported by memplan yet; supported aten ops: "
            f"{len(ATEN_KINDS)} packets (see memplan.ir.ops.supported_ops())", op=name, node=node)
    try:
        impl = resolve_aten(name)
    except (AttributeError, KeyError, RuntimeError):
        raise UnsupportedOpError(f"op {name}{where} does not exist in this torch build", op=name, node=node)
    schema = getattr(impl, "_schema", None)
    if schema is not None and any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
        raise UnsupportedOpError(f"op {name}{where} is not supported: it writes into one of its arguments (an out= "
                                 "or in-place overload); the IR is functional, and in-place writes are planned "
                                 "(reuses)", op=name, node=node)
    opdef = OpDef(name, ATEN_KINDS[packet], impl, view=packet in ATEN_VIEWS, flops=_FLOPS.get(packet),
                  infer=_INFER.get(packet))
    _CACHE[name] = opdef
    return opdef


def is_supported(name: str) -> bool:
    try:
        lookup(name)
        return True
    except UnsupportedOpError:
        return False


def is_view(name: str) -> bool:
    """True when op ``name`` returns an alias of its first input (False for unknown ops)."""
    try:
        return lookup(name).view
    except UnsupportedOpError:
        return False


def supported_ops() -> list[str]:
    """Names of every supported aten packet and custom op."""
    return sorted([f"aten.{p}" for p in ATEN_KINDS] + list(_CUSTOM))


# ---------------------------------------------------------------- inference
def to_meta(value: Value, bindings: dict[str, int] | None = None) -> torch.Tensor:
    t = value.type.concrete(bindings)
    if not t.is_static:
        raise UnsupportedOpError(f"value %{value.name} has symbolic shape {value.type}; "
                                 "bind its dims to run shape inference")
    return torch.empty(t.shape, dtype=t.torch_dtype, device="meta")


_INFERRED: dict = {}  # signature -> output types (meta execution depends on nothing else)
_INFERRED_MAX = 1 << 16


def _signature(obj):
    """A hashable key for an op's arguments: Values by type only (what meta execution sees), lists
    and tuples apart; None where some leaf cannot be a key."""
    if isinstance(obj, Value):
        return ("%", obj.type.dtype, obj.type.shape)
    t = type(obj)
    if t is list or t is tuple:
        items = tuple(_signature(x) for x in obj)
        return None if None in items else (t, items)
    if t is dict:
        items = tuple((k, _signature(x)) for k, x in obj.items())
        return None if any(x is None for _, x in items) else (dict, items)
    if t in (int, float, bool, str, type(None), torch.dtype, torch.memory_format, torch.layout, torch.device):
        return (t, obj)
    return None


def infer_types(node: Node) -> list[TensorType]:
    """Output types of ``node``, inferred from its input types (meta-tensor execution). Results
    are kept per signature (op, input types, argument values): DenseNet-121 runs 1,900 inferences
    over a few hundred distinct signatures."""
    opdef = lookup(node.op, node=node.name, source=node.source)
    if opdef.infer is not None:
        return opdef.infer(node)
    # the default dtype decides results of type promotion and of factory ops given no dtype; a
    # memplan.* op may be registered again with another implementation
    key = _signature((node.op, node.args, node.kwargs))
    if key is not None:
        key = (key, torch.get_default_dtype(), opdef.impl)
    if key is not None and key in _INFERRED:
        return list(_INFERRED[key])
    types = _infer_meta(node, opdef)
    if key is not None:
        if len(_INFERRED) >= _INFERRED_MAX:
            _INFERRED.clear()
        _INFERRED[key] = tuple(types)
    return types


def _infer_meta(node: Node, opdef: OpDef) -> list[TensorType]:
    args = map_values(node.args, to_meta)
    kwargs = map_values(node.kwargs, to_meta)
    schema = getattr(opdef.impl, "_schema", None)
    takes_device = schema is not None and any(a.name == "device" and a.kwarg_only for a in schema.arguments)
    if "device" in kwargs or takes_device:
        # a factory op (aten.full, aten.arange) would otherwise allocate its claimed size for real:
        # torch.ops calls do not follow the default-device context
        kwargs["device"] = torch.device("meta")
    with torch.device("meta"):
        result = opdef.impl(*args, **kwargs)
    return [TensorType.of(t) for t in flatten_outputs(result)]


def flatten_outputs(result) -> list[torch.Tensor]:
    """Tensors of an op's result (a tensor, or a tuple/list of them), in order."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        out = []
        for r in result:
            # None: a gradient a backward op's output_mask turned off; an empty tensor stands for it
            out.extend([torch.empty(0)] if r is None else flatten_outputs(r))
        return out
    raise TypeError(f"op returned {type(result).__name__}, not tensors")

