"""mkldnn_conv: oneDNN convolutions in channels-last layout, relu fused, weights prepacked."""
import pytest
import torch
from torch import nn

import memplan
from memplan.backends.mkldnn import prepack
from memplan.errors import MemplanError
from memplan.backends.pytorch_ops import MKLDNN_CONV2D
from memplan.ir.parser import parse
from memplan.ir.printer import print_graph
from memplan.analysis.strides import eager_strides
from memplan.passes.mkldnn_conv import available
from memplan.profiling import timeline_peak

pytestmark = pytest.mark.skipif(not available(), reason="this torch build has no oneDNN")


class Net(nn.Module):
    """Stride, groups, dilation, no bias, relu fused or not, pooling, and a flatten that a
    channels-last layout cannot view."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4, bias=False)
        self.c3 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        z = self.c2(y)
        z = torch.relu(z) + torch.sigmoid(z)  # two readers: relu is not fused
        w = nn.functional.max_pool2d(torch.relu(self.c3(z)), 2)
        return self.fc(w.flatten(1)), w


def test_rewrite_matches_eager_and_keeps_output_layout():
    model, x = Net().eval(), torch.randn(1, 3, 32, 32)
    cm = memplan.compile(model, (x,), options={"allocation": "storage"})
    convs = [n for n in cm.graph.nodes if n.op == MKLDNN_CONV2D]
    assert len(convs) == 3 and not any(n.op == "aten.convolution.default" for n in cm.graph.nodes)
    assert [n.args[-1] for n in convs] == ["relu", "none", "relu"]
    with torch.no_grad():
        logits, pooled = cm(x)
        ref_logits, ref_pooled = model(x)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-4, atol=1e-4)
    assert pooled.is_contiguous(), "graph outputs keep the layout eager returns"
    assert "memplan_ops.mkldnn_conv2d.out(" in cm.source
    assert timeline_peak(cm, x)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]
    again = parse(print_graph(cm.graph))
    assert again == cm.graph


def test_weights_are_prepacked_once_and_graph_keeps_plain_weights():
    model, x = Net().eval(), torch.randn(1, 3, 32, 32)
    cm = memplan.compile(model, (x,))
    packed = prepack(cm.graph)
    assert packed["c1.weight"].is_mkldnn and not cm.graph.weights["c1.weight"].is_mkldnn
    assert not packed["fc.weight"].is_mkldnn


def test_less_memory_than_aten_convolutions():
    model, x = Net().eval(), torch.randn(1, 3, 64, 64)
    x = torch.randn(1, 3, 32, 32)
    mk = memplan.compile(model, (x,))
    at = memplan.compile(model, (x,), options={"conv_kernel": "aten", "conv_lowering": "never"})
    assert mk.plan.stats["planned_peak_bytes"] < at.plan.stats["planned_peak_bytes"]


def test_bad_option_is_named():
    with pytest.raises(MemplanError, match="conv_kernel"):
        memplan.compile(Net().eval(), (torch.randn(1, 3, 32, 32),), options={"conv_kernel": "cudnn"})


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle between grouped convolutions: a reshape no layout can view."""

    def __init__(self, channels=24, groups=4):
        super().__init__()
        self.groups = groups
        self.a = nn.Conv2d(channels, channels, 1, groups=groups)
        self.b = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x):
        y = torch.relu(self.a(x))
        n, c, h, w = y.shape
        y = y.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.b(y)


def test_graph_input_and_shuffled_conv_inputs_are_channels_last_copies_with_no_scratch():
    model, x = Shuffle().eval(), torch.randn(1, 24, 20, 20)
    cm = memplan.compile(model, (x,))
    convs = [n for n in cm.graph.nodes if n.op == MKLDNN_CONV2D]
    first, second = convs
    assert first.args[0].name == "x_channels_last" and first.args[0].producer.kwargs == {
        "memory_format": torch.channels_last}
    copy = next(n for n in cm.graph.nodes if n.name.endswith("_channels_last") and n is not first.args[0].producer)
    assert copy.op == "aten.clone.default"  # laid out so that the view the second conv reads is channels-last
    strides = eager_strides(cm.graph)
    assert torch.empty_strided(tuple(second.args[0].type.shape), strides[second.args[0].name]).is_contiguous(
        memory_format=torch.channels_last)
    scratch = cm.plan.stats["scratch_bytes"]
    # no reorder inside oneDNN (it would be as large as the input; a small scratchpad remains)
    assert all(scratch.get(n.name, 0) < n.args[0].type.nbytes // 2 for n in convs), scratch
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-4)
    assert timeline_peak(cm, x)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]


def test_clone_into_a_slot_needs_no_scratch():
    from memplan.backends.pytorch_kernels import out_variant, resolve_out
    from memplan.backends.pytorch_scratch import step_scratch
    out_op, args = out_variant("aten.clone.default")
    assert out_op == "memplan.clone.out" and args == ["out"]
    x = torch.randn(1, 8, 6, 6).permute(0, 2, 3, 1)
    out = torch.empty(1, 6, 6, 8)
    resolve_out(out_op)(x, memory_format=torch.contiguous_format, out=out)
    assert torch.equal(out, x.contiguous())
    model = Shuffle().eval()
    cm = memplan.compile(model, (torch.randn(1, 24, 20, 20),))
    clones = [n.name for n in cm.graph.nodes if n.op == "aten.clone.default"]
    assert clones and all(step_scratch(cm.graph, {}).get(c, 0) == 0 for c in clones)


class Residual(nn.Module):
    """conv + relu, conv + residual add, then outputs in several layouts (permuted, transposed,
    plain, flattened): each output keeps eager's strides though the convolutions are channels-last."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.d = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = torch.relu(self.c(x))
        z = self.d(y) + y
        return z.permute(0, 2, 3, 1), z, z.transpose(2, 3), z.reshape(1, -1)


def test_outputs_keep_eager_layout_through_inserted_copies():
    model, x = Residual().eval(), torch.randn(1, 3, 10, 12)
    cm = memplan.compile(model, (x,))
    ops = [n.op for n in cm.graph.nodes]
    assert ops.count(MKLDNN_CONV2D) == 1 and ops.count("memplan.mkldnn_conv2d_add") == 1
    names = [n.name for n in cm.graph.nodes]
    # a permuted output is copied in three steps (permute, contiguous copy, inverse permute), in order
    i = names.index("permute_eager_layout_order")
    assert names[i:i + 3] == ["permute_eager_layout_order", "permute_eager_layout_copy", "permute_eager_layout"]
    with torch.no_grad():
        got, want = cm(x), model(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
        assert g.stride() == w.stride()


def test_the_rewrite_runs_the_graph_on_fake_tensors_twice_and_caches_the_result():
    """Once for the layouts before the rewrite, once while repairing views (which inserts their
    copies as it goes); the strides of the rewritten graph are then known without a third run."""
    from memplan.api import lower
    from memplan.analysis import strides as layout
    from memplan.passes.mkldnn_conv import rewrite_convolutions

    graph = lower(Net().eval(), (torch.randn(1, 3, 32, 32),))
    layout.clear_stride_cache()
    start = layout.fake_runs()
    assert rewrite_convolutions(graph) == (3, 2, 0)
    assert layout.fake_runs() - start == 2
    views = [n for n in graph.nodes if n.op == "aten.view.default"]
    assert views and views[0].args[0].producer.name == "view_contiguous", "the flatten got a copy"
    strides = eager_strides(graph)  # only the output copies were appended since the repair
    assert layout.fake_runs() - start == 3
    assert eager_strides(graph) == strides and layout.fake_runs() - start == 3


class Conv1dNet(nn.Module):
    """1-D convolutions (stride, dilation, groups, no bias), a group norm over a channels-last
    result, a weight shared by two convolutions, and an output transposed as speech encoders do."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(8, 16, 3, padding=1)
        self.norm = nn.GroupNorm(16, 16)
        self.b = nn.Conv1d(16, 16, 3, stride=2, dilation=2, padding=2, bias=False)
        self.c = nn.Conv1d(16, 4, 1, groups=4)

    def forward(self, x):
        y = nn.functional.gelu(self.norm(self.a(x)))
        y = torch.relu(self.b(y))
        y = self.b(y) + 1  # the same weight again
        return self.c(y).transpose(1, 2)


def test_1d_convolutions_run_by_onednn_as_2d_and_match_eager():
    model, x = Conv1dNet().eval(), torch.randn(2, 8, 100)
    cm = memplan.compile(model, (x,))
    ops = [n.op for n in cm.graph.nodes]
    assert ops.count(MKLDNN_CONV2D) == 4 and "aten.convolution.default" not in ops
    lifted = [v.name for v in cm.graph.params if v.name.endswith("_2d")]
    assert sorted(lifted) == ["a.weight_2d", "b.weight_2d", "c.weight_2d"]  # b's weight lifted once
    # the group norm's kernel refuses a channels-last (N, C, L) input: it reads a contiguous copy
    norm = next(n for n in cm.graph.nodes if n.op == "aten.native_group_norm.default")
    assert norm.args[0].producer.op == "aten.clone.default"
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-5)
    assert timeline_peak(cm, x)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]
    assert parse(print_graph(cm.graph)) == cm.graph


def test_1d_convolution_of_a_graph_input_reads_a_channels_last_copy():
    """oneDNN given an NCHW input reorders it inside (scratch) and its functional form returns a
    contiguous result where the plan expects channels-last: the input is copied first instead."""
    model, x = nn.Conv1d(8, 16, 3).eval(), torch.randn(1, 8, 50)
    cm = memplan.compile(model, (x,), options={"allocation": "free"})
    conv = next(n for n in cm.graph.nodes if n.op == MKLDNN_CONV2D)
    copy = conv.args[0].producer
    assert copy.op == "aten.clone.default" and copy.kwargs["memory_format"] == torch.channels_last
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-5)
    assert timeline_peak(cm, x)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]
