"""ONNX neural-network ops: convolution, pooling, normalization, softmax, resize, space/depth.

Registered into :data:`memplan.frontend.onnx_common.ONNX_OPS` (see
:mod:`memplan.frontend.onnx_ops` for the lowering protocol). Padding that
aten cannot express (asymmetric ``pads``, ``auto_pad``) becomes an explicit
``constant_pad_nd`` before the op; Resize lowers, per resized axis, to a
gather of constant neighbour indices and a weighted sum with constant
coefficients computed at import time, which covers every ONNX coordinate
transformation, nearest rounding and cubic variant with plain aten ops.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from memplan.frontend.onnx_common import dtype_of, is_const, norm_axis, onnx_op, rank_of, shape_of


# ---------------------------------------------------------------- padding helpers
def _spatial_pads(b, in_spatial, kernel, strides, dilations, *, transposed=False):
    """Per spatial dim (begin, end) pads from ``pads`` / ``auto_pad``."""
    n = len(in_spatial)
    auto_pad = b.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i in range(n):
            target = -(-in_spatial[i] // strides[i])
            eff_k = (kernel[i] - 1) * dilations[i] + 1
            total = max((target - 1) * strides[i] + eff_k - in_spatial[i], 0)
            small = total // 2
            out.append((small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small))
        return out
    if auto_pad == "VALID":
        return [(0, 0)] * n
    if auto_pad != "NOTSET":
        raise b.fail(f"auto_pad={auto_pad!r} is not supported")
    pads = list(b.attr("pads", [0] * (2 * n)))
    return [(pads[i], pads[i + n]) for i in range(n)]


def _torch_pad_list(pads):
    """[(begin, end)] per spatial dim → constant_pad_nd's list (last dim first)."""
    out = []
    for begin, end in reversed(pads):
        out += [begin, end]
    return out


def _pad_value(dtype, kind):
    if kind == "max":
        return float(torch.finfo(dtype).min) if dtype.is_floating_point else int(torch.iinfo(dtype).min)
    return 0.0 if dtype.is_floating_point else 0


# ---------------------------------------------------------------- convolution
def conv_call(b, x, w, bias=None, *, dtype=None):
    """The ``aten.convolution`` of an ONNX Conv-like node (kernel_shape, strides, dilations, pads or
    auto_pad, group): asymmetric pads become an explicit zero pad first. ``dtype``: compute in it
    (the result is cast back to ``x``'s dtype)."""
    n = rank_of(x) - 2
    kernel = list(b.attr("kernel_shape", shape_of(w)[2:]))
    strides = list(b.attr("strides", [1] * n))
    dilations = list(b.attr("dilations", [1] * n))
    pads = _spatial_pads(b, shape_of(x)[2:], kernel, strides, dilations)
    sym = [p[0] for p in pads]
    if any(p[0] != p[1] for p in pads):
        x = b.call("aten.constant_pad_nd.default", x, _torch_pad_list(pads), 0)
        sym = [0] * n
    out = dtype_of(x)
    if dtype is not None:
        x, w, bias = (None if t is None else b.cast(t, dtype) for t in (x, w, bias))
    y = b.call("aten.convolution.default", x, w, bias, strides, sym, dilations, False, [0] * n,
               int(b.attr("group", 1)))
    return y if dtype is None else b.cast(y, out)


@onnx_op("Conv")
def lower_conv(b, x, w, bias=None):
    return conv_call(b, x, w, bias)


@onnx_op("ConvTranspose")
def lower_conv_transpose(b, x, w, bias=None):
    n = rank_of(x) - 2
    in_sp = shape_of(x)[2:]
    kernel = list(b.attr("kernel_shape", shape_of(w)[2:]))
    strides = list(b.attr("strides", [1] * n))
    dilations = list(b.attr("dilations", [1] * n))
    out_pad = list(b.attr("output_padding", [0] * n))
    group = int(b.attr("group", 1))
    full = [strides[i] * (in_sp[i] - 1) + (kernel[i] - 1) * dilations[i] + 1 for i in range(n)]
    auto_pad = b.attr("auto_pad", "NOTSET")
    if "output_shape" in b.attrs:
        want = list(b.attrs["output_shape"])[-n:]
        pads = []
        for i in range(n):
            total = full[i] + out_pad[i] - want[i]
            if auto_pad == "SAME_UPPER":
                pads.append((total // 2, total - total // 2))
            else:
                pads.append((total - total // 2, total // 2))
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for i in range(n):
            total = full[i] + out_pad[i] - in_sp[i] * strides[i]
            small = total // 2
            pads.append((small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small))
    elif auto_pad == "VALID":
        pads = [(0, 0)] * n
    else:
        p = list(b.attr("pads", [0] * (2 * n)))
        pads = [(p[i], p[i + n]) for i in range(n)]
    native = all(pb == pe and pb >= 0 for pb, pe in pads) and \
        all(op < max(s, d) for op, s, d in zip(out_pad, strides, dilations))
    if native:
        return b.call("aten.convolution.default", x, w, bias, strides, [p[0] for p in pads], dilations, True,
                      out_pad, group)
    y = b.call("aten.convolution.default", x, w, None, strides, [0] * n, dilations, True, [0] * n, group)
    crop = [(-pb, -pe + op) for (pb, pe), op in zip(pads, out_pad)]
    y = b.call("aten.constant_pad_nd.default", y, _torch_pad_list(crop), 0.0)
    if bias is not None:
        y = b.call("aten.add.Tensor", y, b.reshape(bias, [shape_of(bias)[0]] + [1] * n))
    return y


# ---------------------------------------------------------------- pooling
def _pool_geometry(b, x):
    n = rank_of(x) - 2
    kernel = list(b.attr("kernel_shape"))
    strides = list(b.attr("strides", [1] * n))
    dilations = list(b.attr("dilations", [1] * n))
    pads = _spatial_pads(b, shape_of(x)[2:], kernel, strides, dilations)
    return n, kernel, strides, dilations, pads


def _as_2d(b, x, n):
    """1-d pooling runs as 2-d over a unit dim."""
    if n != 1:
        return x
    s = shape_of(x)
    return b.reshape(x, [s[0], s[1], 1, s[2]])


def claim_maxpool(attrs, types, opset, ranks):
    if attrs.get("storage_order", 0):
        return "storage_order=1 indices"
    return None


@onnx_op("MaxPool", claim=claim_maxpool)
def lower_max_pool(b, x):
    if dtype_of(x) in (torch.uint8, torch.int8):  # aten has no 8-bit max pooling: float32 holds them exactly
        out = lower_max_pool(b, b.cast(x, torch.float32))
        if isinstance(out, tuple):
            return (b.cast(out[0], dtype_of(x)),) + tuple(out[1:])
        return b.cast(out, dtype_of(x))
    n, kernel, strides, dilations, pads = _pool_geometry(b, x)
    ceil = bool(b.attr("ceil_mode", 0))
    want_indices = len(b.node.output) > 1 and bool(b.node.output[1])
    sym_ok = all(p0 == p1 and p0 * 2 <= k for (p0, p1), k in zip(pads, kernel))
    if not sym_ok:
        if want_indices:
            raise b.fail("Indices output with asymmetric pads is not supported")
        x = b.call("aten.constant_pad_nd.default", x, _torch_pad_list(pads), _pad_value(dtype_of(x), "max"))
        pads = [(0, 0)] * n
    if n > 3:
        raise b.fail(f"{n}-d pooling is not supported")
    shape = shape_of(x)
    xin = _as_2d(b, x, n)
    if n == 1:
        kernel, strides, dilations, pad = [1] + kernel, [1] + strides, [1] + dilations, [0, pads[0][0]]
    else:
        pad = [p[0] for p in pads]
    if not want_indices and n != 3:
        y = b.call("aten.max_pool2d.default", xin, kernel, strides, pad, dilations, ceil)
        return b.reshape(y, [shape[0], shape[1], shape_of(y)[-1]]) if n == 1 else y
    op = "aten.max_pool3d_with_indices.default" if n == 3 else "aten.max_pool2d_with_indices.default"
    y, idx = b.call(op, xin, kernel, strides, pad, dilations, ceil)
    if n == 1:
        y = b.reshape(y, [shape[0], shape[1], shape_of(y)[-1]])
        idx = b.reshape(idx, shape_of(y))
    if not want_indices:
        return y
    # ONNX indices count over the whole tensor (row-major), torch's within each (n, c) plane
    plane = math.prod(shape[2:])
    ys = shape_of(y)
    offset = (torch.arange(ys[0] * ys[1], dtype=torch.int64) * plane).reshape([ys[0], ys[1]] + [1] * n)
    return y, b.call("aten.add.Tensor", idx, offset)


@onnx_op("AveragePool")
def lower_avg_pool(b, x):
    n, kernel, strides, dilations, pads = _pool_geometry(b, x)
    ceil = bool(b.attr("ceil_mode", 0))
    include = bool(b.attr("count_include_pad", 0))
    if any(d != 1 for d in dilations):
        return _dilated_avg_pool(b, x, n, kernel, strides, dilations, pads, ceil, include)
    if n > 3:
        raise b.fail(f"{n}-d pooling is not supported")
    sym_ok = all(p0 == p1 and p0 * 2 <= k for (p0, p1), k in zip(pads, kernel))
    if sym_ok:
        return _avg_pool(b, x, n, kernel, strides, [p[0] for p in pads], ceil, include)
    padded = b.call("aten.constant_pad_nd.default", x, _torch_pad_list(pads), 0.0)
    total = _avg_pool(b, padded, n, kernel, strides, [0] * n, ceil, True)
    if include:
        return total
    ones = torch.ones((1, 1) + tuple(shape_of(x)[2:]), dtype=dtype_of(x))
    count = torch.nn.functional.pad(ones, _torch_pad_list(pads))
    count = _avg_pool_const(count, n, kernel, strides, ceil)
    return b.call("aten.div.Tensor", total, count)


def _dilated_avg_pool(b, x, n, kernel, strides, dilations, pads, ceil, include, *, sums: bool = False):
    """Average pooling over dilated windows: window sums by a depthwise convolution with a kernel of
    ones (aten's pooling has no dilation), divided by each window's count of elements (of the input,
    or of the padded input with ``count_include_pad``), a constant computed at import."""
    spatial = list(shape_of(x)[2:])
    extra = []
    for i in range(n):
        span = dilations[i] * (kernel[i] - 1) + 1
        padded = spatial[i] + pads[i][0] + pads[i][1]
        num = padded - span
        out = (-(-num // strides[i]) if ceil else num // strides[i]) + 1
        if ceil and (out - 1) * strides[i] >= spatial[i] + pads[i][0]:
            out -= 1  # no window starts in the right padding
        extra.append(max(0, (out - 1) * strides[i] + span - padded))
    full = [(p[0], p[1] + e) for p, e in zip(pads, extra)]
    c = shape_of(x)[1]
    xp = b.call("aten.constant_pad_nd.default", x, _torch_pad_list(full), 0.0)
    ones = torch.ones([c, 1] + kernel, dtype=dtype_of(x))
    total = b.call("aten.convolution.default", xp, ones, None, strides, [0] * n, dilations, False, [0] * n, c)
    if sums:
        return total
    mask = torch.ones([1, 1] + spatial, dtype=torch.float64)
    if include:
        mask = torch.nn.functional.pad(mask, _torch_pad_list(pads), value=1.0)
        mask = torch.nn.functional.pad(mask, _torch_pad_list([(0, e) for e in extra]))
    else:
        mask = torch.nn.functional.pad(mask, _torch_pad_list(full))
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[n]
    count = conv(mask, torch.ones([1, 1] + kernel, dtype=torch.float64), stride=strides, dilation=dilations)
    return b.call("aten.div.Tensor", total, count.to(dtype_of(x)))


def _avg_pool_const(t, n, kernel, strides, ceil):
    if n == 1:
        return torch.ops.aten.avg_pool1d.default(t, kernel, strides, [0], ceil, True)
    if n == 2:
        return torch.ops.aten.avg_pool2d.default(t, kernel, strides, [0, 0], ceil, True)
    return torch.ops.aten.avg_pool3d.default(t, kernel, strides, [0] * 3, ceil, True)


def _avg_pool(b, x, n, kernel, strides, pad, ceil, include):
    if n == 1:
        return b.call("aten.avg_pool1d.default", x, kernel, strides, pad, ceil, include)
    if n == 2:
        return b.call("aten.avg_pool2d.default", x, kernel, strides, pad, ceil, include)
    return b.call("aten.avg_pool3d.default", x, kernel, strides, pad, ceil, include)


@onnx_op("GlobalAveragePool")
def lower_global_avg_pool(b, x):
    return b.call("aten.mean.dim", x, list(range(2, rank_of(x))), True)


@onnx_op("GlobalMaxPool")
def lower_global_max_pool(b, x):
    return b.call("aten.amax.default", x, list(range(2, rank_of(x))), True)


@onnx_op("LpPool")
def lower_lp_pool(b, x):
    n, kernel, strides, dilations, pads = _pool_geometry(b, x)
    p = float(b.attr("p", 2))
    ceil = bool(b.attr("ceil_mode", 0))
    powed = b.call("aten.pow.Tensor_Scalar", b.call("aten.abs.default", x), p)
    if any(d != 1 for d in dilations):  # the window sums of |x|^p over dilated windows
        total = _dilated_avg_pool(b, powed, n, kernel, strides, dilations, pads, ceil, True, sums=True)
        return b.call("aten.pow.Tensor_Scalar", total, 1.0 / p)
    padded = b.call("aten.constant_pad_nd.default", powed, _torch_pad_list(pads), 0.0) \
        if any(p0 or p1 for p0, p1 in pads) else powed
    mean = _avg_pool(b, padded, n, kernel, strides, [0] * n, ceil, True)
    total = b.call("aten.mul.Tensor", mean, torch.tensor(float(math.prod(kernel)), dtype=dtype_of(x)))
    return b.call("aten.pow.Tensor_Scalar", total, 1.0 / p)


@onnx_op("GlobalLpPool")
def lower_global_lp_pool(b, x):
    p = float(b.attr("p", 2))
    powed = b.call("aten.pow.Tensor_Scalar", b.call("aten.abs.default", x), p)
    total = b.call("aten.sum.dim_IntList", powed, list(range(2, rank_of(x))), True)
    return b.call("aten.pow.Tensor_Scalar", total, 1.0 / p)


# ---------------------------------------------------------------- normalization
def claim_batchnorm(attrs, types, opset, ranks):
    if attrs.get("training_mode", 0):
        return "training mode"
    return None


@onnx_op("BatchNormalization", claim=claim_batchnorm)
def lower_batch_norm(b, x, scale, bias, mean, var):
    if b.attr("training_mode", 0) or (b.opset < 7 and not b.attr("is_test", 0)) or \
            sum(1 for o in b.node.output if o) > 1:
        raise b.fail("training mode (batch statistics) is not supported; export the model in eval mode")
    eps = float(b.attr("epsilon", 1e-5))
    if b.attr("spatial", 1) == 0:
        raise b.fail("spatial=0 is not supported")
    y = b.call("aten._native_batch_norm_legit_no_training.default", x, scale, bias, mean, var, 0.1, eps)
    return y[0]


@onnx_op("InstanceNormalization")
def lower_instance_norm(b, x, scale, bias):
    s = shape_of(x)
    eps = float(b.attr("epsilon", 1e-5))
    y = b.call("aten.native_group_norm.default", x, scale, bias, s[0], s[1], math.prod(s[2:]), s[1], eps)
    return y[0]


@onnx_op("GroupNormalization")
def lower_group_norm(b, x, scale, bias):
    s = shape_of(x)
    eps = float(b.attr("epsilon", 1e-5))
    groups = int(b.attr("num_groups"))
    c = s[1]
    if shape_of(scale)[0] != c:  # opset 18: per-group scale and bias
        rep = torch.tensor([i // (c // groups) for i in range(c)])
        scale = b.call("aten.index_select.default", scale, 0, rep)
        bias = b.call("aten.index_select.default", bias, 0, rep)
    dt = dtype_of(x)
    stash = b.attr("stash_type", 1) == 1 and dt in (torch.float16, torch.bfloat16)
    xin = b.cast(x, torch.float32) if stash else x
    if stash:
        scale, bias = b.cast(scale, torch.float32), b.cast(bias, torch.float32)
    y = b.call("aten.native_group_norm.default", xin, scale, bias, s[0], c, math.prod(s[2:]), groups, eps)[0]
    return b.cast(y, dt)


@onnx_op("LayerNormalization")
def lower_layer_norm(b, x, scale, bias=None):
    s = list(shape_of(x))
    axis = norm_axis(b.attr("axis", -1), len(s))
    eps = float(b.attr("epsilon", 1e-5))
    norm_shape = s[axis:]
    dt = dtype_of(x)
    stash = b.attr("stash_type", 1) == 1 and dt != torch.float32 and dt != torch.float64
    xin = b.cast(x, torch.float32) if stash else x
    w = scale
    if list(shape_of(w)) != norm_shape:
        w = b.call("aten.expand.default", b.reshape(w, [1] * (len(norm_shape) - rank_of(w)) + list(shape_of(w))),
                   norm_shape)
    bb = bias
    if bb is not None and list(shape_of(bb)) != norm_shape:
        bb = b.call("aten.expand.default",
                    b.reshape(bb, [1] * (len(norm_shape) - rank_of(bb)) + list(shape_of(bb))), norm_shape)
    if stash:
        w = b.cast(w, torch.float32)
        bb = b.cast(bb, torch.float32) if bb is not None else None
    y, mean, rstd = b.call("aten.native_layer_norm.default", xin, norm_shape, w, bb, eps)
    return b.cast(y, dt), mean, rstd


@onnx_op("RMSNormalization")
def lower_rms_norm(b, x, scale):
    s = list(shape_of(x))
    axis = norm_axis(b.attr("axis", -1), len(s))
    eps = float(b.attr("epsilon", 1e-5))
    dt = dtype_of(x)
    stash = b.attr("stash_type", 1) == 1 and dt != torch.float64
    xin = b.cast(x, torch.float32) if stash else x
    ms = b.call("aten.mean.dim", b.call("aten.mul.Tensor", xin, xin), list(range(axis, len(s))), True)
    inv = b.call("aten.rsqrt.default", b.call("aten.add.Tensor", ms, torch.tensor(eps, dtype=dtype_of(xin))))
    y = b.cast(b.call("aten.mul.Tensor", xin, inv), dt)
    return b.call("aten.mul.Tensor", y, scale)


@onnx_op("MeanVarianceNormalization")
def lower_mvn(b, x):
    axes = [norm_axis(a, rank_of(x)) for a in b.attr("axes", [0, 2, 3])]
    mean = b.call("aten.mean.dim", x, axes, True)
    centered = b.call("aten.sub.Tensor", x, mean)
    var = b.call("aten.mean.dim", b.call("aten.mul.Tensor", centered, centered), axes, True)
    std = b.call("aten.sqrt.default", var)
    return b.call("aten.div.Tensor", centered, b.call("aten.add.Tensor", std, torch.tensor(1e-9, dtype=dtype_of(x))))


@onnx_op("LpNormalization")
def lower_lp_norm(b, x):
    axis = norm_axis(b.attr("axis", -1), rank_of(x))
    p = int(b.attr("p", 2))
    if p not in (1, 2):
        raise b.fail(f"p={p} is not supported (1, 2)")
    norm = b.call("aten.linalg_vector_norm.default", x, float(p), [axis], True)
    zero = b.call("aten.eq.Tensor", norm, torch.tensor(0, dtype=dtype_of(x)))
    return b.call("aten.where.self", zero, torch.tensor(0, dtype=dtype_of(x)), b.call("aten.div.Tensor", x, norm))


def _softmax(b, x, op):
    dims = shape_of(x)
    if b.opset < 13:
        axis = norm_axis(b.attr("axis", 1), len(dims))
        flat = b.reshape(x, [math.prod(dims[:axis]), math.prod(dims[axis:])])
        return b.reshape(b.call(op, flat, 1, False), dims)
    axis = norm_axis(b.attr("axis", -1), len(dims))
    return b.call(op, x, axis, False)


@onnx_op("Softmax")
def lower_softmax(b, x):
    return _softmax(b, x, "aten._softmax.default")


@onnx_op("LogSoftmax")
def lower_log_softmax(b, x):
    return _softmax(b, x, "aten._log_softmax.default")


@onnx_op("LRN")
def lower_lrn(b, x):
    size = int(b.attr("size"))
    alpha, beta, bias = float(b.attr("alpha", 1e-4)), float(b.attr("beta", 0.75)), float(b.attr("bias", 1.0))
    r = rank_of(x)
    c = shape_of(x)[1]
    sq = b.call("aten.mul.Tensor", x, x)
    lo, hi = (size - 1) // 2, (size - 1) - (size - 1) // 2
    pads = [0, 0] * (r - 2) + [lo, hi]
    padded = b.call("aten.constant_pad_nd.default", sq, pads, 0.0)
    total = None
    for i in range(size):
        part = b.call("aten.slice.Tensor", padded, 1, i, i + c, 1)
        total = part if total is None else b.call("aten.add.Tensor", total, part)
    dt = dtype_of(x)
    denom = b.call("aten.add.Tensor", b.call("aten.mul.Tensor", total, torch.tensor(alpha / size, dtype=dt)),
                   torch.tensor(bias, dtype=dt))
    return b.call("aten.div.Tensor", x, b.call("aten.pow.Tensor_Scalar", denom, beta))


# ---------------------------------------------------------------- space/depth
@onnx_op("DepthToSpace")
def lower_depth_to_space(b, x):
    n, c, h, w = shape_of(x)
    bs = int(b.attr("blocksize"))
    if b.attr("mode", "DCR") == "CRD":
        return b.call("aten.pixel_shuffle.default", x, bs)
    y = b.reshape(x, [n, bs, bs, c // (bs * bs), h, w])
    y = b.call("aten.permute.default", y, [0, 3, 4, 1, 5, 2])
    return b.reshape(y, [n, c // (bs * bs), h * bs, w * bs])


@onnx_op("SpaceToDepth")
def lower_space_to_depth(b, x):
    n, c, h, w = shape_of(x)
    bs = int(b.attr("blocksize"))
    y = b.reshape(x, [n, c, h // bs, bs, w // bs, bs])
    perm = [0, 1, 3, 5, 2, 4] if b.attr("mode", "DCR") == "CRD" else [0, 3, 5, 1, 2, 4]
    y = b.call("aten.permute.default", y, perm)
    return b.reshape(y, [n, c * bs * bs, h // bs, w // bs])


# ---------------------------------------------------------------- resize
def _x_original(mode, out_int, scale, in_w, roi):
    """Source coordinates of each output index along one axis (ONNX Resize semantics)."""
    y = np.arange(out_int, dtype=np.float64)
    out_w = scale * in_w
    extrapolated = None
    if mode == "align_corners":
        x = np.zeros(out_int) if out_w == 1 else y * (in_w - 1) / (out_w - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        if out_w == 1:
            x = np.full(out_int, (roi[1] - roi[0]) * (in_w - 1) / 2)
        else:
            x = y * (roi[1] - roi[0]) * (in_w - 1) / (out_w - 1)
        x = x + roi[0] * (in_w - 1)
        extrapolated = (x < 0) | (x > in_w - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full(out_int, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        adjustment = out_int / out_w
        offset = in_w / 2 * (1 - adjustment)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(mode)
    return x, extrapolated


def _coeffs(mode, ratio, scale, a, antialias, nearest_mode):
    if mode == "nearest":
        if float(ratio).is_integer():
            return np.array([0.0, 1.0])
        pick = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
                "floor": False, "ceil": True}[nearest_mode]
        return np.array([0.0, 1.0]) if pick else np.array([1.0, 0.0])
    if mode == "linear":
        if antialias:
            s = min(scale, 1.0)
            start = int(np.floor(-1 / s) + 1)
            args = (np.arange(start, 2 - start) - ratio) * s
            c = np.clip(1 - np.abs(args), 0, 1)
            return c / c.sum()
        return np.array([1 - ratio, ratio])
    if antialias:
        s = min(scale, 1.0)
        i_start = int(np.floor(-2 / s) + 1)

        def k(t):
            t = abs(t)
            if t <= 1:
                return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
            if t < 2:
                return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
            return 0.0
        c = np.array([k(s * (i - ratio)) for i in range(i_start, 2 - i_start)])
        return c / c.sum()
    r = ratio
    return np.array([
        ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
        ((a + 2) * r - (a + 3)) * r * r + 1,
        ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
        ((a * ((1 - r) + 1) - 5 * a) * ((1 - r) + 1) + 8 * a) * ((1 - r) + 1) - 4 * a,
    ])


def resize_taps(mode, coord_mode, in_w, out_int, scale, roi, *, a=-0.75, antialias=False,
                exclude_outside=False, nearest_mode="round_prefer_floor"):
    """Per output index along one axis: neighbour indices ``[out, n]``, their weights ``[out, n]``
    and the extrapolation mask (or None); a port of ONNX's reference Resize."""
    x, extrapolated = _x_original(coord_mode, out_int, scale, in_w, roi)
    x_int = np.floor(x).astype(np.int64)
    ratios = np.where(x == x_int, 1.0, x - x_int)
    coeffs = np.stack([_coeffs(mode, float(r), scale, a, antialias, nearest_mode) for r in ratios]) \
        if out_int else np.zeros((0, 2))
    n = coeffs.shape[1]
    pad = int(np.ceil(n / 2))
    xp = x + pad
    p = np.floor(xp).astype(np.int64)
    frac = xp - p
    if n % 2 == 0:
        off = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        base = -((n - 1) // 2)
        off = np.where(frac <= 0.5, base, base + 1)
    idx = (p + off)[:, None] + np.arange(n)[None, :] - pad
    if exclude_outside:
        outside = (idx < 0) | (idx >= in_w)
        coeffs = np.where(outside, 0.0, coeffs)
        total = coeffs.sum(axis=-1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, in_w - 1), coeffs, extrapolated


def claim_resize(attrs, types, opset, ranks):
    if attrs.get("mode", "nearest") not in ("nearest", "linear", "cubic"):
        return "mode"
    return None


@onnx_op("Resize", claim=claim_resize)
def lower_resize(b, x, roi=None, scales=None, sizes=None):
    dims = list(shape_of(x))
    r = len(dims)
    mode = b.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        raise b.fail(f"mode={mode!r} is not supported (nearest, linear, cubic)")
    coord = b.attr("coordinate_transformation_mode", "half_pixel")
    if coord not in ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                     "tf_crop_and_resize"):
        raise b.fail(f"coordinate_transformation_mode={coord!r} is not supported")
    if b.opset < 11 and scales is None:  # Resize-10: (X, scales)
        scales, roi = roi, None
    axes = [norm_axis(a, r) for a in b.attr("axes", list(range(r)))]
    scale_f = [1.0] * r
    out = list(dims)
    scl = [float(v) for v in b.const(scales, "scales").reshape(-1).tolist()] if scales is not None and \
        (not is_const(scales) or scales.numel()) else None
    siz = b.ints(sizes, "sizes") if sizes is not None and (not is_const(sizes) or sizes.numel()) else None
    if siz is not None:
        for i, a in enumerate(axes):
            scale_f[a] = siz[i] / dims[a]
            out[a] = siz[i]
        policy = b.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            s = pick(scale_f[a] for a in axes)
            for a in axes:
                scale_f[a] = s
                out[a] = int(s * dims[a] + 0.5)
    elif scl is not None:
        for i, a in enumerate(axes):
            scale_f[a] = scl[i]
            out[a] = int(math.floor(scl[i] * dims[a]))
    else:
        raise b.fail("neither scales nor sizes is given")
    roi_v = None
    if coord == "tf_crop_and_resize":
        rv = [float(v) for v in b.const(roi, "roi").reshape(-1).tolist()]
        roi_v = [0.0] * r + [1.0] * r
        for i, a in enumerate(axes):
            roi_v[a], roi_v[r + a] = rv[i], rv[len(axes) + i]
    antialias = bool(b.attr("antialias", 0)) and mode != "nearest"
    a_coef = float(b.attr("cubic_coeff_a", -0.75))
    exclude = bool(b.attr("exclude_outside", 0))
    nearest_mode = b.attr("nearest_mode", "round_prefer_floor")
    extrap = float(b.attr("extrapolation_value", 0.0))
    y = x
    mask = None
    for a in axes:
        roi_a = None if roi_v is None else (roi_v[a], roi_v[r + a])
        if math.isclose(scale_f[a], 1.0) and out[a] == dims[a] and \
                (roi_a is None or (math.isclose(roi_a[0], 0.0) and math.isclose(roi_a[1], 1.0))):
            continue
        idx, w, ext = resize_taps(mode, coord, dims[a], out[a], scale_f[a], roi_a, a=a_coef, antialias=antialias,
                                  exclude_outside=exclude, nearest_mode=nearest_mode)
        y = _apply_taps(b, y, a, idx, w, mode)
        if ext is not None and ext.any():
            m = torch.from_numpy(ext).reshape([out[a] if i == a else 1 for i in range(r)])
            mask = m if mask is None else (mask | m)
    if mask is not None:
        y = b.call("aten.where.self", mask, torch.tensor(extrap, dtype=dtype_of(x)), y)
    return y


def _apply_taps(b, x, axis, idx, w, mode):
    dims = list(shape_of(x))
    out_n, n = idx.shape
    if mode == "nearest":
        pick = idx[np.arange(out_n), np.argmax(w, axis=1)] if out_n else np.zeros(0, dtype=np.int64)
        return b.call("aten.index_select.default", x, axis, torch.from_numpy(np.ascontiguousarray(pick)))
    dt = dtype_of(x)
    flat = torch.from_numpy(np.ascontiguousarray(idx.reshape(-1)))
    g = b.call("aten.index_select.default", x, axis, flat)
    g = b.reshape(g, dims[:axis] + [out_n, n] + dims[axis + 1:])
    wt = torch.from_numpy(w).to(dt if dt.is_floating_point else torch.float32)
    wt = wt.reshape([out_n, n] + [1] * (len(dims) - axis - 1))
    if not dt.is_floating_point:
        g = b.cast(g, torch.float32)
    y = b.call("aten.sum.dim_IntList", b.call("aten.mul.Tensor", g, wt), [axis + 1])
    return b.cast(y, dt)


@onnx_op("Upsample")
def lower_upsample(b, x, scales=None):
    dims = list(shape_of(x))
    scl = [float(v) for v in (b.const(scales, "scales").reshape(-1).tolist() if scales is not None
                              else b.attr("scales"))]
    mode = b.attr("mode", "nearest")
    out = [int(math.floor(s * d)) for s, d in zip(scl, dims)]
    y = x
    for a in range(len(dims)):
        if out[a] == dims[a] and scl[a] == 1.0:
            continue
        m = "linear" if mode in ("linear", "bilinear") else "nearest"
        idx, w, _ = resize_taps(m, "asymmetric", dims[a], out[a], scl[a], None, nearest_mode="floor")
        y = _apply_taps(b, y, a, idx, w, m)
    return y


# ---------------------------------------------------------------- sampling
def claim_grid_sample(attrs, types, opset, ranks):
    if attrs.get("mode", "linear" if opset >= 20 else "bilinear") not in ("bilinear", "linear", "nearest",
                                                                          "bicubic", "cubic"):
        return "mode"
    if ranks and ranks[0] is not None and ranks[0] not in (4, 5):
        return f"rank-{ranks[0]} sampling"
    if ranks and ranks[0] == 5 and attrs.get("mode") in ("bicubic", "cubic"):
        return "volumetric cubic sampling"
    return None


@onnx_op("GridSample", claim=claim_grid_sample)
def lower_grid_sample(b, x, grid):
    if rank_of(x) not in (4, 5):
        raise b.fail("only 4-d and 5-d (2-d and 3-d spatial) grid sampling is supported")
    mode = b.attr("mode", "linear" if b.opset >= 20 else "bilinear")
    modes = {"bilinear": 0, "linear": 0, "nearest": 1, "bicubic": 2, "cubic": 2}
    pads = {"zeros": 0, "border": 1, "reflection": 2}
    pm = b.attr("padding_mode", "zeros")
    if mode not in modes or pm not in pads:
        raise b.fail(f"mode={mode!r}, padding_mode={pm!r} is not supported")
    if rank_of(x) == 5 and modes[mode] == 2:
        raise b.fail("cubic sampling of a volume (aten has none)")
    op = "aten.grid_sampler_2d.default" if rank_of(x) == 4 else "aten.grid_sampler_3d.default"
    return b.call(op, x, grid, modes[mode], pads[pm], bool(b.attr("align_corners", 0)))


@onnx_op("Col2Im")
def lower_col2im(b, x, image_shape, block_shape):
    image = b.ints(image_shape, "image_shape")
    block = b.ints(block_shape, "block_shape")
    n = len(image)
    if len(block) != n or n < 1:
        raise b.fail(f"image_shape {image} and block_shape {block} differ in length")
    dilations = list(b.attr("dilations", [1] * n))
    strides = list(b.attr("strides", [1] * n))
    pads = list(b.attr("pads", [0] * 2 * n))
    if len(pads) != 2 * n or len(dilations) != n or len(strides) != n:
        raise b.fail(f"pads {pads}, dilations {dilations}, strides {strides} do not fit a {n}-d image")
    padded = [image[i] + pads[i] + pads[n + i] for i in range(n)]
    if n == 2:  # aten pads symmetrically: fold onto the padded image, then cut the pads off
        y = b.call("aten.col2im.default", x, padded, block, dilations, [0, 0], strides)
    else:
        y = _col2im_nd(b, x, padded, block, dilations, strides)
    for i in range(n):
        if pads[i] or pads[n + i]:
            y = b.call("aten.slice.Tensor", y, 2 + i, pads[i], pads[i] + image[i])
    return y


def _col2im_nd(b, x, padded, block, dilations, strides):
    """Col2Im of any rank: a grouped transposed convolution with one-hot kernels (each block position
    of each channel adds its column entry to one image element), padded up to the image."""
    n = len(padded)
    k = math.prod(block)
    batch, ck, cols = shape_of(x)
    if ck % k:
        raise b.fail(f"dim 1 of the input ({ck}) is not a multiple of the block's {k} elements")
    c = ck // k
    grid = [(padded[i] - dilations[i] * (block[i] - 1) - 1) // strides[i] + 1 for i in range(n)]
    if math.prod(grid) != cols or any(g < 1 for g in grid):
        raise b.fail(f"the input has {cols} columns; blocks of {block} over {padded} give {math.prod(grid)}")
    x = b.reshape(x, [batch, ck] + grid)
    w = torch.zeros([ck, 1] + list(block), dtype=dtype_of(x))
    for ch in range(c):
        for j in range(k):
            w[(ch * k + j, 0) + tuple(int(v) for v in np.unravel_index(j, block))] = 1.0
    y = b.call("aten.convolution.default", x, w, None, strides, [0] * n, dilations, True, [0] * n, c)
    short = [padded[i] - shape_of(y)[2 + i] for i in range(n)]
    if any(short):
        pad = []
        for i in reversed(range(n)):
            pad += [0, short[i]]
        y = b.call("aten.constant_pad_nd.default", y, pad, 0.0)
    return y


@onnx_op("Det")
def lower_det(b, x):
    return b.call("aten.linalg_det.default", x)


@onnx_op("TensorScatter")
def lower_tensor_scatter(b, past, update, write_indices=None):
    r = rank_of(past)
    axis = norm_axis(int(b.attr("axis", -2)), r)
    mode = b.attr("mode", "linear")
    if mode not in ("linear", "circular"):
        raise b.fail(f"mode {mode!r} is not linear or circular")
    if axis == 0:
        raise b.fail("axis 0 is the batch axis")
    batch, seq, size = shape_of(update)[0], shape_of(update)[axis], shape_of(past)[axis]
    if write_indices is None:
        write_indices = torch.zeros(batch, dtype=torch.int64)
    start = b.reshape(b.cast(write_indices, torch.int64), [batch] + [1] * (r - 1))
    steps = torch.arange(seq, dtype=torch.int64).reshape([seq if d == axis else 1 for d in range(r)])
    index = b.call("aten.add.Tensor", start, steps)
    if mode == "circular":
        index = b.call("aten.remainder.Scalar", index, size)
    index = b.call("aten.expand.default", index, list(shape_of(update)))
    return b.call("aten.scatter.src", past, axis, index, update)


@onnx_op("AffineGrid")
def lower_affine_grid(b, theta, size):
    dims = b.ints(size, "size")
    if len(dims) not in (4, 5) or rank_of(theta) != 3 or shape_of(theta)[1:] != ((2, 3) if len(dims) == 4 else (3, 4)):
        raise b.fail(f"theta {list(shape_of(theta))} and size {dims} are not a 2-d ([N, 2, 3], [N, C, H, W]) or 3-d "
                     "([N, 3, 4], [N, C, D, H, W]) affine grid")
    return b.call("aten.affine_grid_generator.default", theta, dims, bool(b.attr("align_corners", 0)))
