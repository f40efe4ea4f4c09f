"""mkldnn_conv: oneDNN convolutions in channels-last layout, relu fused, weights prepacked."""
import pytest
import torch
from torch import nn

import memplan
from memplan.backends.mkldnn import prepack
from memplan.errors import MemplanError
from memplan.ir.custom_ops import MKLDNN_CONV2D
from memplan.ir.parser import parse
from memplan.ir.printer import print_graph
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
    cm = memplan.compile(model, (x,))
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
