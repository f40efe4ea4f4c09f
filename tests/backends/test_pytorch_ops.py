"""memplan's own out= kernels match aten exactly (they replace aten's copying out= forms)."""
import itertools

import pytest
import torch

from memplan.backends.pytorch_ops import _constant_pad_nd_out, _max_pool2d_out
from memplan.backends.pytorch_kernels import out_variant


@pytest.mark.parametrize("shape,pad", [((1, 3, 5, 5), [0, 1, 0, 1]), ((2, 4, 6), [1, 2]),
                                       ((1, 3, 5, 5), [-1, 2, 1, -2]), ((3, 4), [0, 0, 2, 1]),
                                       ((1, 2, 3, 4), [1, 1, 1, 1, 1, 1])])
def test_constant_pad_out_matches_aten(shape, pad):
    x = torch.randn(shape)
    ref = torch.ops.aten.constant_pad_nd(x, pad, -3.0)
    out = torch.empty_like(ref)
    _constant_pad_nd_out(x, pad, -3.0, out=out)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("hw,channels_last", [((7, 7), False), ((8, 9), True), ((13, 10), False)])
def test_max_pool_out_matches_aten(hw, channels_last):
    checked = 0
    for k, s, p, d, ceil in itertools.product((1, 2, 3), (1, 2, 3), (0, 1), (1, 2), (False, True)):
        if p > k // 2:
            continue
        x = torch.randn(1, 3, *hw)
        x[0, 0, 0, 0] = float("nan")
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            ref = torch.ops.aten.max_pool2d(x, [k, k], [s, s], [p, p], [d, d], ceil)
        except RuntimeError:  # an output size aten rejects
            continue
        out = torch.empty_like(ref)
        _max_pool2d_out(x, [k, k], [s, s], [p, p], [d, d], ceil, out=out)
        torch.testing.assert_close(out, ref, equal_nan=True, rtol=0, atol=0)
        checked += 1
    assert checked > 40


def test_overrides_are_the_out_variants():
    assert out_variant("aten.constant_pad_nd.default") == ("memplan.constant_pad_nd.out", ["out"])
    assert out_variant("aten.max_pool2d.default") == ("memplan.max_pool2d.out", ["out"])
