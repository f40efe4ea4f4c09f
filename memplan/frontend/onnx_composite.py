"""ONNX ops that lower to a short chain of aten ops: Attention, the losses, windows, crops.

Registered into :data:`memplan.frontend.onnx_common.ONNX_OPS`. Masks that ONNX
writes with ``-inf`` become constant tensors (the emitted code holds no
non-finite literals); causal and padding masks over static shapes fold to
constants at import time.
"""
from __future__ import annotations

import math

import torch

from memplan.frontend.onnx_common import dtype_of, norm_axis, onnx_op, rank_of, shape_of, torch_dtype_of


def _neg_inf(dt):
    return torch.tensor(-math.inf, dtype=dt)


def _bias_from_bool(b, allowed, dt):
    """0 where ``allowed``, -inf elsewhere."""
    return b.call("aten.where.self", allowed, torch.tensor(0, dtype=dt), _neg_inf(dt))


def _pad_last(b, m, n, fill):
    """Pad the last dim of ``m`` with ``n`` entries of ``fill`` (False or -inf)."""
    pads = [0, n]
    if dtype_of(m) == torch.bool:
        return b.call("aten.constant_pad_nd.default", m, pads, False)
    y = b.call("aten.constant_pad_nd.default", m, pads, 0.0)
    mask = torch.nn.functional.pad(torch.zeros(shape_of(m), dtype=torch.bool), pads, value=True)
    return b.call("aten.where.self", mask, torch.tensor(fill, dtype=dtype_of(m)), y)


def _to_heads(b, x, heads):
    bsz, s, hidden = shape_of(x)
    y = b.reshape(x, [bsz, s, heads, hidden // heads])
    return b.call("aten.permute.default", y, [0, 2, 1, 3])


def claim_attention(attrs, types, opset, ranks):
    if types and (16 in types or 10 in types):
        return "16-bit floats: aten accumulates in float32, the reference rounds as it goes"
    return None


@onnx_op("Attention", claim=claim_attention)
def lower_attention(b, q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None):
    dt = dtype_of(q)
    three_d = rank_of(q) == 3
    if three_d:
        q = _to_heads(b, q, int(b.attr("q_num_heads")))
        k = _to_heads(b, k, int(b.attr("kv_num_heads")))
        v = _to_heads(b, v, int(b.attr("kv_num_heads")))
    head = shape_of(q)[3]
    scale = b.attr("scale")
    scale = 1 / math.sqrt(head) if scale is None else float(scale)
    root = torch.tensor(math.sqrt(scale), dtype=dt)
    if past_key is not None:
        k = b.call("aten.cat.default", [past_key, k], 2)
    if past_value is not None:
        v = b.call("aten.cat.default", [past_value, v], 2)
    present_k, present_v = k, v
    bsz, q_heads, q_len = shape_of(q)[:3]
    kv_heads, kv_len = shape_of(k)[1], shape_of(k)[2]
    bias = torch.zeros((q_len, kv_len), dtype=dt)
    if attn_mask is not None and shape_of(attn_mask)[-1] < kv_len:
        fill = False if dtype_of(attn_mask) == torch.bool else -math.inf
        attn_mask = _pad_last(b, attn_mask, kv_len - shape_of(attn_mask)[-1], fill)
    if attn_mask is not None and dtype_of(attn_mask) == torch.bool:
        attn_mask = _bias_from_bool(b, attn_mask, dt)
    i_idx = torch.arange(q_len).reshape(q_len, 1)
    j_idx = torch.arange(kv_len).reshape(1, kv_len)
    per_batch = past_key is None and nonpad_kv_seqlen is not None
    if per_batch:
        offset = b.call("aten.sub.Tensor", b.cast(nonpad_kv_seqlen, torch.int64), torch.tensor(q_len))
        offset = b.reshape(offset, [shape_of(nonpad_kv_seqlen)[0], 1, 1])
    else:
        offset = torch.tensor(shape_of(past_key)[2] if past_key is not None else 0)
    if b.attr("is_causal", 0):
        base = bias if attn_mask is None else attn_mask
        allowed = b.call("aten.le.Tensor", j_idx, b.call("aten.add.Tensor", i_idx, offset))
        causal = _bias_from_bool(b, allowed, dt)
        if per_batch:
            causal = b.call("aten.unsqueeze.default", causal, 1)
        bias = b.call("aten.add.Tensor", base, causal)
    elif attn_mask is not None:
        bias = b.call("aten.add.Tensor", bias, attn_mask)
    left, right = int(b.attr("left_window_size", -1)), int(b.attr("right_window_size", -1))
    if left >= 0 or right >= 0:
        diff = b.call("aten.sub.Tensor", b.call("aten.add.Tensor", i_idx, offset), j_idx)
        allowed = torch.ones((), dtype=torch.bool)
        if left >= 0:
            allowed = b.call("aten.logical_and.default", allowed, b.call("aten.le.Tensor", diff, torch.tensor(left)))
        if right >= 0:
            allowed = b.call("aten.logical_and.default", allowed,
                             b.call("aten.ge.Tensor", diff, torch.tensor(-right)))
        window = _bias_from_bool(b, allowed, dt)
        if per_batch:
            window = b.call("aten.unsqueeze.default", window, 1)
        bias = b.call("aten.add.Tensor", b.call("aten.add.Tensor", torch.zeros((q_len, kv_len), dtype=dt), bias),
                      window)
    if nonpad_kv_seqlen is not None:
        lens = b.reshape(b.cast(nonpad_kv_seqlen, torch.int64), [shape_of(nonpad_kv_seqlen)[0], 1])
        keep = b.call("aten.lt.Tensor", torch.arange(kv_len).reshape(1, kv_len), lens)
        keep = b.reshape(keep, [bsz, 1, 1, kv_len])
        bias = b.call("aten.add.Tensor", bias, _bias_from_bool(b, keep, dt))
    if q_heads != kv_heads and q_heads % kv_heads == 0:
        reps = q_heads // kv_heads
        k = _repeat_heads(b, k, reps)
        v = _repeat_heads(b, v, reps)
    kt = b.call("aten.permute.default", k, [0, 1, 3, 2])
    qk = b.call("aten.matmul.default", b.call("aten.mul.Tensor", q, root), b.call("aten.mul.Tensor", kt, root))
    softcap = float(b.attr("softcap", 0.0))
    if softcap > 0:
        capped = b.call("aten.tanh.default", b.call("aten.div.Tensor", qk, torch.tensor(softcap, dtype=dt)))
        qk = b.call("aten.mul.Tensor", capped, torch.tensor(softcap, dtype=dt))
    with_bias = b.call("aten.add.Tensor", qk, bias)
    mode = int(b.attr("qk_matmul_output_mode", 0))
    qk_out = with_bias if mode == 2 else qk
    precision = b.attr("softmax_precision")
    scores = b.cast(with_bias, torch_dtype_of(precision, "softmax_precision")) if precision is not None \
        else with_bias
    probs = b.call("aten._softmax.default", scores, -1, False)
    masked_rows = b.call("aten.eq.Tensor", b.call("aten.amax.default", bias, [-1], True), _neg_inf(dtype_of(bias)))
    probs = b.call("aten.where.self", masked_rows, torch.tensor(0, dtype=dtype_of(probs)), probs)
    if mode == 3:
        qk_out = probs
    qk_out = b.cast(qk_out, dt)
    probs = b.cast(probs, dt)
    y = b.call("aten.matmul.default", probs, v)
    if three_d:
        y = b.call("aten.permute.default", y, [0, 2, 1, 3])
        s = shape_of(y)
        y = b.reshape(y, [s[0], s[1], s[2] * s[3]])
    return y, present_k, present_v, qk_out


def _repeat_heads(b, x, reps):
    bsz, h, s, d = shape_of(x)
    y = b.reshape(x, [bsz, h, 1, s, d])
    y = b.call("aten.expand.default", y, [bsz, h, reps, s, d])
    return b.reshape(y, [bsz, h * reps, s, d])


# ---------------------------------------------------------------- losses
def _nll(b, logp, target, weight, reduction, ignore_index, weigh_ignored):
    dt = dtype_of(logp)
    c = shape_of(logp)[1]
    tshape = list(shape_of(target))
    t = b.cast(target, torch.int64)
    mask = None
    if ignore_index is not None:
        mask = b.call("aten.eq.Tensor", t, torch.tensor(int(ignore_index)))
        t_safe = b.call("aten.where.self", mask, torch.tensor(0), t)
    else:
        t_safe = t
    picked = b.call("aten.gather.default", logp, 1, b.call("aten.unsqueeze.default", t_safe, 1))
    loss = b.call("aten.neg.default", b.reshape(picked, tshape))
    if mask is not None:
        loss = b.call("aten.where.self", mask, torch.tensor(0, dtype=dt), loss)
    gw = None
    if weight is not None:
        clipped = b.call("aten.clamp.default", t, 0, c - 1)
        gw = b.reshape(b.call("aten.index_select.default", weight, 0,
                              b.reshape(clipped, [math.prod(tshape)])), tshape)
        if mask is not None:
            gw = b.call("aten.where.self", mask, torch.tensor(0, dtype=dt), gw)
    elif weigh_ignored and mask is not None:
        gw = b.call("aten.where.self", mask, torch.tensor(0, dtype=dt), torch.tensor(1, dtype=dt))
    if gw is not None:
        loss = b.call("aten.mul.Tensor", gw, loss)
        if reduction == "mean":
            total = b.call("aten.sum.default", loss)
            return b.call("aten.div.Tensor", total, b.call("aten.sum.default", gw))
    if reduction == "mean":
        return b.call("aten.mean.default", loss)
    if reduction == "sum":
        return b.call("aten.sum.default", loss)
    if reduction == "none":
        return loss
    raise b.fail(f"reduction={reduction!r} is not supported")


@onnx_op("NegativeLogLikelihoodLoss")
def lower_nll_loss(b, x, target, weight=None):
    ii = b.attr("ignore_index")
    return _nll(b, x, target, weight, b.attr("reduction", "mean"), ii, ii is not None and ii != -1)


@onnx_op("SoftmaxCrossEntropyLoss")
def lower_softmax_cross_entropy(b, scores, labels, weights=None):
    logp = b.call("aten._log_softmax.default", scores, 1, False)
    loss = _nll(b, logp, labels, weights, b.attr("reduction", "mean"), b.attr("ignore_index"), True)
    return loss, logp


# ---------------------------------------------------------------- crops, windows, sequences
@onnx_op("CenterCropPad")
def lower_center_crop_pad(b, x, shape):
    dims = list(shape_of(x))
    r = len(dims)
    target = b.ints(shape, "shape")
    axes = [norm_axis(a, r) for a in b.attr("axes", list(range(r)))]
    y = x
    for a, want in zip(axes, target):
        have = dims[a]
        if want < have:
            start = (have - want) // 2
            y = b.call("aten.slice.Tensor", y, a, start, start + want, 1)
        elif want > have:
            before = (want - have) // 2
            pads = [0, 0] * (r - 1 - a) + [before, want - have - before]
            y = b.call("aten.constant_pad_nd.default", y, pads, 0)
    return y


def _window(b, size, fn):
    n = int(b.scalar(size, "size"))
    periodic = bool(b.attr("periodic", 1))
    dt = torch_dtype_of(b.attr("output_datatype", 1), "output_datatype")
    denom = n if periodic else n - 1
    k = torch.arange(n, dtype=torch.float64)
    w = fn(2 * math.pi * k / denom if denom else torch.zeros(n, dtype=torch.float64), k)
    return w.to(dt)


@onnx_op("HannWindow")
def lower_hann(b, size):
    return _window(b, size, lambda t, k: 0.5 - 0.5 * torch.cos(t))


@onnx_op("HammingWindow")
def lower_hamming(b, size):
    return _window(b, size, lambda t, k: 25 / 46 - (1 - 25 / 46) * torch.cos(t))


@onnx_op("BlackmanWindow")
def lower_blackman(b, size):
    return _window(b, size, lambda t, k: 0.42 - 0.5 * torch.cos(t) + 0.08 * torch.cos(2 * t))


@onnx_op("ReverseSequence")
def lower_reverse_sequence(b, x, lens):
    dims = shape_of(x)
    batch_axis = b.attr("batch_axis", 1)
    time_axis = b.attr("time_axis", 0)
    t_len, n = dims[time_axis], dims[batch_axis]
    shape2 = [1] * len(dims)
    shape2[time_axis] = t_len
    t = torch.arange(t_len).reshape(shape2)
    shape_l = [1] * len(dims)
    shape_l[batch_axis] = n
    seq = b.reshape(b.cast(lens, torch.int64), shape_l)
    rev = b.call("aten.sub.Tensor", b.call("aten.sub.Tensor", seq, torch.tensor(1)), t)
    idx = b.call("aten.where.self", b.call("aten.lt.Tensor", t, seq), rev, t)
    idx = b.call("aten.expand.default", idx, list(dims))
    return b.call("aten.gather.default", x, time_axis, idx)


__all__ = ["lower_attention", "lower_nll_loss", "lower_softmax_cross_entropy"]
