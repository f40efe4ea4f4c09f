"""Signal ops: ``DFT`` (forward, inverse, one-sided, inverse one-sided) and ``STFT``.

ONNX holds a complex signal as real tensors with a last dim of 2 (real, imaginary) or 1 (real).
A transform of length ``L`` is two matrix products with a ``cos`` and a ``sin`` table of
``L x K`` (``K`` the output frequencies), computed in float64 as onnx's reference (numpy's FFT)
computes, and cast back to the input's type. The tables are exact where the angle is a multiple
of pi/2 (built from the integer phase ``k * t mod L``). A table larger than
:data:`MAX_TABLE_BYTES` is refused (an FFT kernel is not part of the plan yet).
"""
from __future__ import annotations

import math

import torch

from memplan.frontend.onnx_common import dtype_of, is_const, norm_axis, onnx_op, rank_of, shape_of

MAX_TABLE_BYTES = 256 * 2**20


def _tables(b, rows: int, cols: int, length: int, sign: float):
    """cos and ``sign`` * sin of 2 pi k t / length for t < rows, k < cols (float64)."""
    if 2 * rows * cols * 8 > MAX_TABLE_BYTES:
        raise b.fail(f"a transform of length {length} needs {2 * rows * cols * 8} bytes of tables, more than "
                     f"memplan's limit of {MAX_TABLE_BYTES}")
    t = torch.arange(rows, dtype=torch.int64).reshape(rows, 1)
    k = torch.arange(cols, dtype=torch.int64).reshape(1, cols)
    phase = (t * k) % length  # exact integer phase
    angle = phase.to(torch.float64) * (2 * math.pi / length)
    cos, sin = torch.cos(angle), torch.sin(angle)
    quarter = (4 * phase) % length == 0  # multiples of pi/2: exact 0 and +-1
    q = (4 * phase) // length
    cos = torch.where(quarter, torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=torch.float64)[q % 4], cos)
    sin = torch.where(quarter, torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64)[q % 4], sin)
    return cos, sin * sign


def _split(b, x):
    """Real and imaginary parts (float64, the complex dim dropped); imaginary None for a real signal."""
    x = b.cast(x, torch.float64)
    last = rank_of(x) - 1
    parts = shape_of(x)[-1]
    if parts not in (1, 2):
        raise b.fail(f"the last dim holds {parts} values; a signal's is 1 (real) or 2 (real, imaginary)")
    re = b.call("aten.select.int", x, last, 0)
    im = b.call("aten.select.int", x, last, 1) if parts == 2 else None
    return re, im


def _to_length(b, x, axis: int, length: int):
    n = shape_of(x)[axis]
    if n > length:
        return b.call("aten.slice.Tensor", x, axis, 0, length)
    if n < length:
        pad = [0, 0] * (rank_of(x) - 1 - axis) + [0, length - n]
        return b.call("aten.constant_pad_nd.default", x, pad, 0.0)
    return x


def _last(b, x, axis):
    """``x`` with ``axis`` moved last (a view), and the permutation back."""
    r = rank_of(x)
    if axis == r - 1:
        return x, None
    order = [d for d in range(r) if d != axis] + [axis]
    back = [order.index(d) for d in range(r)]
    return b.call("aten.permute.default", x, order), back


def _mm(b, x, table):
    return b.call("aten.matmul.default", x, table)


def _transform(b, re, im, axis: int, length: int, *, inverse: bool, onesided: bool, out_dtype):
    """The DFT of (re, im) along ``axis`` (of the complex-dim-free signal); ONNX's layout out."""
    if inverse and onesided:  # numpy's irfft: a half spectrum in, a real signal of ``length`` out
        half = length // 2 + 1
        re, im = _to_length(b, re, axis, half), (None if im is None else _to_length(b, im, axis, half))
        cos, sin = _tables(b, half, length, length, 1.0)
        weight = torch.full((half, 1), 2.0, dtype=torch.float64)
        weight[0] = 1.0
        if length % 2 == 0:
            weight[half - 1] = 1.0
        cos, sin = cos * weight / length, sin * weight / length
        re_l, back = _last(b, re, axis)
        y = _mm(b, re_l, cos)
        if im is not None:
            im_l, _ = _last(b, im, axis)
            keep = torch.ones(half, 1, dtype=torch.float64)
            keep[0] = 0.0  # the imaginary parts of X_0 (and X_L/2) do not enter a real signal
            if length % 2 == 0:
                keep[half - 1] = 0.0
            y = b.call("aten.sub.Tensor", y, _mm(b, im_l, sin * keep))
        if back is not None:
            y = b.call("aten.permute.default", y, back)
        return b.cast(b.call("aten.unsqueeze.default", y, rank_of(y)), out_dtype)
    re = _to_length(b, re, axis, length)
    im = None if im is None else _to_length(b, im, axis, length)
    cols = length // 2 + 1 if onesided else length
    cos, sin = _tables(b, length, cols, length, 1.0 if inverse else -1.0)
    if inverse:
        cos, sin = cos / length, sin / length
    re_l, back = _last(b, re, axis)
    out_re, out_im = _mm(b, re_l, cos), _mm(b, re_l, sin)
    if im is not None:  # (re + i im)(cos + i sin) = re cos - im sin + i (re sin + im cos)
        im_l, _ = _last(b, im, axis)
        out_re = b.call("aten.sub.Tensor", out_re, _mm(b, im_l, sin))
        out_im = b.call("aten.add.Tensor", out_im, _mm(b, im_l, cos))
    y = b.call("aten.stack.default", [out_re, out_im], rank_of(out_re))
    if back is not None:
        y = b.call("aten.permute.default", y, back + [len(back)])
    return b.cast(y, out_dtype)


@onnx_op("DFT")
def lower_dft(b, x, dft_length=None, axis=None):
    r = rank_of(x)
    if b.opset >= 20:
        a = -2 if axis is None else int(b.scalar(axis, "axis"))
    else:
        a = int(b.attr("axis", 1))
    a = norm_axis(a, r)
    if a == r - 1:
        raise b.fail("the transform axis is the complex dim")
    inverse, onesided = bool(b.attr("inverse", 0)), bool(b.attr("onesided", 0))
    if onesided and not inverse and shape_of(x)[-1] == 2:
        raise b.fail("a one-sided transform takes a real signal")
    if dft_length is not None:
        length = int(b.scalar(dft_length, "dft_length"))
    elif inverse and onesided:
        length = 2 * (shape_of(x)[a] - 1)
    else:
        length = shape_of(x)[a]
    if length < 1:
        raise b.fail(f"dft_length {length} must be positive")
    re, im = _split(b, x)
    return _transform(b, re, im, a, length, inverse=inverse, onesided=onesided, out_dtype=dtype_of(x))


@onnx_op("STFT")
def lower_stft(b, x, frame_step, window=None, frame_length=None):
    step = int(b.scalar(frame_step, "frame_step"))
    if frame_length is not None:
        n = int(b.scalar(frame_length, "frame_length"))
    elif window is not None:
        n = shape_of(window)[0]
    else:
        n = shape_of(x)[-2]
    if rank_of(x) != 3:
        raise b.fail(f"the signal has rank {rank_of(x)}; it is [batch, length, 1 or 2]")
    if step < 1 or n < 1 or n > shape_of(x)[1]:
        raise b.fail(f"frame_step {step} and frame_length {n} do not fit a signal of {shape_of(x)[1]} samples")
    onesided = bool(b.attr("onesided", 1))
    re, im = _split(b, x)  # [batch, length]
    frames = [b.call("aten.unfold.default", p, 1, n, step) if p is not None else None for p in (re, im)]
    if window is not None:
        w = b.cast(window, torch.float64)
        if shape_of(w)[0] != n:
            raise b.fail(f"the window has {shape_of(w)[0]} samples, frame_length is {n}")
        frames = [b.call("aten.mul.Tensor", f, w) if f is not None else None for f in frames]
    return _transform(b, frames[0], frames[1], 2, n, inverse=False, onesided=onesided, out_dtype=dtype_of(x))


__all__ = ["MAX_TABLE_BYTES"]
