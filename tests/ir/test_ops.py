"""The op registry: kinds, views, flop and byte counts, reference semantics, refusals."""
import pytest
import torch

from memplan.errors import UnsupportedOpError
from memplan.ir import Graph, TensorType
from memplan.ir.ops import OpKind, infer_types, lookup


def _node(op, in_types, args_fn, out_types):
    g = Graph("g")
    ins = [g.add_input(f"i{k}", TensorType("f32", s)) for k, s in enumerate(in_types)]
    outs = g.add_node(op, args_fn(ins), {}, [TensorType("f32", s) for s in out_types])
    return g.nodes[-1], outs


def test_kinds_follow_the_fuse_pattern_lattice():
    assert lookup("aten.relu.default").kind is OpKind.ELEMENTWISE
    assert lookup("aten.add.Tensor").kind is OpKind.BROADCAST
    assert lookup("aten.cat.default").kind is OpKind.INJECTIVE
    assert lookup("aten.sum.dim_IntList").kind is OpKind.REDUCTION
    assert lookup("aten.convolution.default").kind is OpKind.OPAQUE
    assert lookup("aten.view.default").view and lookup("aten.split_with_sizes.default").view
    assert not lookup("aten.clone.default").view


def test_flops_and_bytes():
    mm, _ = _node("aten.mm.default", [(8, 16), (16, 4)], lambda i: (i[0], i[1]), [(8, 4)])
    assert lookup(mm.op).flop_count(mm) == 2 * 8 * 4 * 16
    assert lookup(mm.op).bytes_moved(mm) == 4 * (8 * 16 + 16 * 4 + 8 * 4)
    conv, _ = _node("aten.convolution.default", [(1, 3, 8, 8), (6, 3, 3, 3)],
                    lambda i: (i[0], i[1], None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1), [(1, 6, 8, 8)])
    assert lookup(conv.op).flop_count(conv) == 2 * (6 * 8 * 8) * (3 * 3 * 3)
    sdpa, _ = _node("aten.scaled_dot_product_attention.default", [(2, 4, 10, 8)] * 3, lambda i: tuple(i),
                    [(2, 4, 10, 8)])
    assert lookup(sdpa.op).flop_count(sdpa) == 4 * 2 * 4 * 10 * 10 * 8
    view, _ = _node("aten.view.default", [(4, 4)], lambda i: (i[0], [16]), [(16,)])
    assert lookup(view.op).bytes_moved(view) == 0 and lookup(view.op).flop_count(view) == 0


def test_inference_and_reference_agree_with_torch():
    node, _ = _node("aten.addmm.default", [(4,), (3, 5), (5, 4)], lambda i: tuple(i), [(3, 4)])
    assert infer_types(node) == [TensorType("f32", (3, 4))]
    a, b, c = torch.randn(4), torch.randn(3, 5), torch.randn(5, 4)
    torch.testing.assert_close(lookup(node.op).impl(a, b, c), torch.addmm(a, b, c))


@pytest.mark.parametrize("op,reason", [
    ("aten.nonzero.default", "depends on the data"),
    ("aten.bernoulli.default", "random"),
    ("aten.fancy_op.default", "not supported by memplan yet"),
    ("onnx.Foo", "unknown op"),
])
def test_refused_ops_say_why(op, reason):
    with pytest.raises(UnsupportedOpError, match=reason):
        lookup(op, node="n1")
