"""The PyTorch backend's kernel dialect: ``memplan.*`` ops that name a kernel choice.

aten has no copy-free ``out=`` form for some ops (its ``out=`` computes a
temporary and copies), and oneDNN's convolutions are called through
``torch.ops.mkldnn``. The backend's ``legalize`` step rewrites aten ops into
these (``memplan.mkldnn_conv2d``, ``memplan.max_pool2d``, ...), and the
emitted code calls their ``.out`` forms into planned slots. They are kernel
choices of this backend, not IR semantics: they live here, and the backend
registers them in the op registry (:func:`memplan.ir.opdef.register_op`) when
it is imported (importing ``memplan`` imports it), so that planned IR naming
them parses, type-checks and runs. Each has a reference implementation, which
shape inference and the fake-tensor layout analysis run.
"""
from __future__ import annotations

import math

import torch

from memplan.ir.opdef import OpKind, conv_flops, register_op


def _pointwise_conv(x, weight, bias, stride, padding, dilation, groups, activation="none"):
    """A 2-D convolution (plus ``activation``: ``"none"`` or ``"relu"``) by oneDNN, in channels-last
    layout: ``relu?(conv2d(x, weight, bias))``. ``weight`` is the plain weight, or the same weight
    prepacked by :func:`memplan.backends.mkldnn.prepack` (what the compiled module passes)."""
    return torch.ops.mkldnn._convolution_pointwise.default(
        x, weight, bias, list(padding), list(stride), list(dilation), groups, activation, [], None)


def _pointwise_conv_out(x, weight, bias, stride, padding, dilation, groups, activation="none", *, out):
    """:func:`_pointwise_conv` written into ``out``: oneDNN's in-place "sum" form
    (``out = act(conv(x) + out)``) over a zeroed ``out``; no temporary besides oneDNN's own."""
    return _accumulate_conv(out.zero_(), x, weight, bias, stride, padding, dilation, groups, activation)


def _accumulate_conv(out, x, weight, bias, stride, padding, dilation, groups, activation):
    """``out = act(conv2d(x, weight, bias) + out)`` in place, by oneDNN's "sum" post-op."""
    torch.ops.mkldnn._convolution_pointwise_.binary(
        out, x, weight, bias, list(padding), list(stride), list(dilation), groups, "add", None,
        None if activation == "none" else activation, [], None)
    return out


_pointwise_conv.out = _pointwise_conv_out

MKLDNN_CONV2D = "memplan.mkldnn_conv2d"
register_op(MKLDNN_CONV2D, OpKind.OPAQUE, _pointwise_conv, flops=conv_flops, out_args=["out"])


def _pointwise_conv_add(x, weight, bias, stride, padding, dilation, groups, other, activation="none"):
    """``act(conv2d(x, weight, bias) + other)`` by oneDNN (a residual connection), channels-last.
    (Composed here so that meta and fake tensors run it; the planned code calls ``.out``.)"""
    y = _pointwise_conv(x, weight, bias, stride, padding, dilation, groups).add_(other)
    return y.relu_() if activation == "relu" else y


def _pointwise_conv_add_out(x, weight, bias, stride, padding, dilation, groups, other, activation="none", *, out):
    """:func:`_pointwise_conv_add` written into ``out``, which may be ``other`` itself (the
    ``inplace`` pass lets the residual's buffer take the sum): oneDNN's "sum" post-op adds the
    convolution to what ``out`` holds."""
    if out.data_ptr() != other.data_ptr() or out.stride() != other.stride():
        out.copy_(other)
    return _accumulate_conv(out, x, weight, bias, stride, padding, dilation, groups, activation)


_pointwise_conv_add.out = _pointwise_conv_add_out
MKLDNN_CONV2D_ADD = "memplan.mkldnn_conv2d_add"
register_op(MKLDNN_CONV2D_ADD, OpKind.OPAQUE, _pointwise_conv_add, flops=conv_flops, out_args=["out"],
            inplace_args=(7,))  # the sum may be written over the residual (``other``)
MKLDNN_CONVS = (MKLDNN_CONV2D, MKLDNN_CONV2D_ADD)


def _constant_pad_nd_out(x, pad, value=0.0, *, out):
    """``aten.constant_pad_nd`` written into ``out`` (aten's ``out=`` form computes a temporary and
    copies it): fill ``out`` with ``value``, then copy ``x`` into its interior (negative pads crop)."""
    src = [slice(None)] * x.dim()
    dst = [slice(None)] * x.dim()
    for i in range(len(pad) // 2):
        d = x.dim() - 1 - i
        lo, hi = int(pad[2 * i]), int(pad[2 * i + 1])
        src[d] = slice(max(-lo, 0), x.shape[d] - max(-hi, 0))
        dst[d] = slice(max(lo, 0), out.shape[d] - max(hi, 0))
    out.fill_(0 if value is None else value)
    out[tuple(dst)].copy_(x[tuple(src)])
    return out


def _constant_pad_nd(x, pad, value=0.0):
    return torch.ops.aten.constant_pad_nd.default(x, pad, value)


_constant_pad_nd.out = _constant_pad_nd_out
CONSTANT_PAD_OUT = "memplan.constant_pad_nd"
register_op(CONSTANT_PAD_OUT, OpKind.INJECTIVE, _constant_pad_nd, out_args=["out"])


def _clone_out(x, *, memory_format=None, out):
    """``aten.clone`` written into ``out``: one copy into the slot, whose strides already give the
    requested memory format (aten's ``out=`` form clones into a temporary and copies that)."""
    return out.copy_(x)


def _clone(x, *, memory_format=None):
    return torch.ops.aten.clone.default(x, memory_format=memory_format)


_clone.out = _clone_out
register_op("memplan.clone", OpKind.INJECTIVE, _clone, out_args=["out"])


def _batch_norm_inference_out(x, weight, bias, running_mean, running_var, momentum, eps, *, out0, out1, out2):
    """``aten._native_batch_norm_legit_no_training`` written into ``out0`` by
    ``native_batch_norm.out`` in eval mode, which writes in place (the ``_legit`` form's ``out=``
    computes a temporary as large as ``x`` and copies it; measured here it is also 3x slower)."""
    torch.ops.aten.native_batch_norm.out(x, weight, bias, running_mean, running_var, False, momentum, eps,
                                         out=out0, save_mean=out1, save_invstd=out2)
    return out0, out1, out2


def _batch_norm_inference(x, weight, bias, running_mean, running_var, momentum, eps):
    return torch.ops.aten._native_batch_norm_legit_no_training.default(
        x, weight, bias, running_mean, running_var, momentum, eps)


_batch_norm_inference.out = _batch_norm_inference_out
register_op("memplan.batch_norm_inference", OpKind.REDUCTION, _batch_norm_inference,
            out_args=["out0", "out1", "out2"])


def _pair(v, default=None):
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        v = default
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _max_pool2d_out(x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False, *, out):
    """``aten.max_pool2d`` written into ``out`` with no scratch: ``out`` starts at -inf and takes the
    elementwise maximum with each of the ``kh·kw`` strided windows of ``x`` (aten's ``out=`` form goes
    through ``max_pool2d_with_indices``: int64 indices plus a copied result, three times ``out``)."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride, kernel_size)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    H, W = x.shape[-2:]
    Ho, Wo = out.shape[-2:]
    out.fill_(-math.inf)

    def span(i, k_step, s, p, n_in, n_out):  # output range whose window tap i reads inside the input
        first = max(0, -((i * k_step - p) // s)) if i * k_step < p else 0
        last = min(n_out, (n_in - 1 + p - i * k_step) // s + 1)
        return first, last
    for i in range(kh):
        r0, r1 = span(i, dh, sh, ph, H, Ho)
        for j in range(kw):
            c0, c1 = span(j, dw, sw, pw, W, Wo)
            if r0 >= r1 or c0 >= c1:
                continue
            rs, cs = r0 * sh - ph + i * dh, c0 * sw - pw + j * dw
            window = x[..., rs:rs + (r1 - r0 - 1) * sh + 1:sh, cs:cs + (c1 - c0 - 1) * sw + 1:sw]
            dst = out[..., r0:r1, c0:c1]
            torch.maximum(dst, window, out=dst)
    return out


def _max_pool2d(x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    return torch.ops.aten.max_pool2d.default(x, kernel_size, stride, padding, dilation, ceil_mode)


_max_pool2d.out = _max_pool2d_out
register_op("memplan.max_pool2d", OpKind.OPAQUE, _max_pool2d, out_args=["out"])


def _embedding_out(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False, *, out):
    """``aten.embedding`` written into ``out`` by ``index_select.out`` over the flattened indices (aten
    has no ``embedding.out``: without this the result would be kernel-owned, a large relative-position
    bias table included); a non-contiguous ``out`` takes a copy of the plain result."""
    if out.is_contiguous() and weight.dim() == 2:
        torch.index_select(weight, 0, indices.reshape(-1), out=out.view(-1, weight.shape[1]))
        return out
    return out.copy_(torch.ops.aten.embedding.default(weight, indices, padding_idx, scale_grad_by_freq, sparse))


def _embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return torch.ops.aten.embedding.default(weight, indices, padding_idx, scale_grad_by_freq, sparse)


_embedding.out = _embedding_out
register_op("memplan.embedding", OpKind.INJECTIVE, _embedding, out_args=["out"])
