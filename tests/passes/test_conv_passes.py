"""fold_batchnorm and lower_conv (with aten convolutions): same numbers, fewer bytes."""
import pytest
import torch
from torch import nn

import memplan


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(8, 32, 3, padding=1, stride=2)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        for bn in (self.bn1, self.bn2):
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.5, 0.5)
            nn.init.uniform_(bn.running_var, 0.5, 1.5)
            nn.init.uniform_(bn.running_mean, -0.2, 0.2)

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


@pytest.mark.parametrize("mode", ["never", "always", "auto"])
def test_folding_and_lowering_keep_numerics(mode):
    model, x = Block().eval(), torch.randn(1, 8, 20, 20)
    cm = memplan.compile(model, (x,), options={"conv_lowering": mode, "conv_kernel": "aten"})
    ops = [n.op for n in cm.graph.nodes]
    assert "aten._native_batch_norm_legit_no_training.default" not in ops, "batch norms are folded"
    assert "aten.relu.default" not in ops and "aten.clamp_min.default" in ops
    if mode == "always":
        assert "aten.convolution.default" not in ops
        assert "aten.im2col.default" in ops, "the 3x3 stride-2 conv needs a planned column buffer"
        assert ops.count("aten.addmm.default") == 2, "folded batch norms give both convolutions a bias"
    if mode == "never":
        assert ops.count("aten.convolution.default") == 2
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-4)


def test_batch_norm_feeding_two_users_is_not_folded():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            c = self.conv(x)
            return self.bn(c) + c

    model, x = Two().eval(), torch.randn(1, 3, 8, 8)
    cm = memplan.compile(model, (x,))
    assert any(n.op.startswith("aten._native_batch_norm") for n in cm.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x))


@pytest.mark.parametrize("kernel", ["mkldnn", "aten"])
def test_unfolded_batch_norm_writes_into_its_slot_without_scratch(kernel):
    """DenseNet's pre-activation order (concat → bn → relu → conv): nothing to fold into, so
    the batch norm runs by ``native_batch_norm.out`` (``_legit``'s ``out=`` copies a temporary)."""
    from memplan.profiling import timeline_peak

    class PreAct(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = Block().bn2
            self.conv = nn.Conv2d(64, 16, 1)

        def forward(self, a, b):
            return self.conv(torch.relu(self.bn(torch.cat([a, b], 1))))

    model = PreAct().eval()
    a, b = torch.randn(1, 32, 24, 24), torch.randn(1, 32, 24, 24)
    cm = memplan.compile(model, (a, b), options={"conv_kernel": kernel})
    (bn,) = [n for n in cm.graph.nodes if n.op == "aten._native_batch_norm_legit_no_training.default"]
    assert "memplan_ops.batch_norm_inference.out(" in cm.source
    assert cm.plan.stats["scratch_bytes"].get(bn.name, 0) < bn.outputs[0].type.nbytes // 8
    with torch.no_grad():
        torch.testing.assert_close(cm(a, b), model(a, b), rtol=1e-5, atol=1e-5)
    assert timeline_peak(cm, a, b)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]
