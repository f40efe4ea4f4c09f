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
    cm = memplan.compile(model, (a, b), options={"conv_kernel": kernel, "allocation": "storage"})
    (bn,) = [n for n in cm.graph.nodes if n.op == "aten._native_batch_norm_legit_no_training.default"]
    assert "memplan_ops.batch_norm_inference.out(" in cm.source
    assert cm.plan.stats["scratch_bytes"].get(bn.name, 0) < bn.outputs[0].type.nbytes // 8
    with torch.no_grad():
        torch.testing.assert_close(cm(a, b), model(a, b), rtol=1e-5, atol=1e-5)
    assert timeline_peak(cm, a, b)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]


def _ctx(**options):
    from types import SimpleNamespace
    return SimpleNamespace(log=[], options=options)


def test_batch_norm_after_a_folded_one_is_not_folded_into_the_same_convolution():
    """conv → bn → bn: the first folds; the second reads the conv's output only once the first is
    gone, which must not make it look foldable (pairs are found on the graph as it came in)."""
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
            for bn in (self.bn1, self.bn2):
                nn.init.uniform_(bn.running_var, 0.5, 1.5)
                nn.init.uniform_(bn.running_mean, -0.2, 0.2)

        def forward(self, x):
            return self.bn2(self.bn1(self.conv(x)))

    from memplan.api import lower
    from memplan.passes.fold_batchnorm import fold_batchnorm
    model, x = Twice().eval(), torch.randn(1, 3, 8, 8)
    graph, ctx = lower(model, (x,)), _ctx()
    fold_batchnorm(graph, ctx)
    bns = [n for n in graph.nodes if n.op == "aten._native_batch_norm_legit_no_training.default"]
    assert len(bns) == 1 and bns[0].args[0].producer.op == "aten.convolution.default"
    assert ctx.log == ["fold_batchnorm: folded 1 batch norms into their convolutions"]
    cm = memplan.compile(graph)
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-4)


def test_canonicalize_forwards_chains_of_copies_and_erases_dead_code():
    from memplan.ir.graph import Graph
    from memplan.ir.types import TensorType
    from memplan.passes.canonicalize import canonicalize

    t = TensorType("f32", (2, 3))
    g = Graph("copies")
    x = g.add_input("x", t)
    w = g.add_param("w", t, torch.ones(2, 3))
    g.add_param("unused", t, torch.ones(2, 3))
    (c1,) = g.add_node("aten.clone.default", (x,), {}, [t], name="c1")
    (c2,) = g.add_node("aten.detach.default", (c1,), {}, [t], name="c2")
    (dead,) = g.add_node("aten.mul.Tensor", (c2, w), {}, [t], name="dead")
    g.add_node("aten.neg.default", (dead,), {}, [t], name="dead2")
    (r,) = g.add_node("aten.relu.default", (c2,), {}, [t], name="r")
    (kept,) = g.add_node("aten.clone.default", (r,), {}, [t], name="kept")  # a graph output: stays
    g.outputs = [kept, w]
    ctx = _ctx()
    canonicalize(g, ctx)
    assert [(n.name, n.op) for n in g.nodes] == [("r", "aten.clamp_min.default"), ("kept", "aten.clone.default"),
                                                  ("w_copy", "aten.clone.default")]
    assert g.node("r").args == (x, 0) and g.outputs == [kept, g.node("w_copy").outputs[0]]
    assert [p.name for p in g.params] == ["w"] and set(g.weights) == {"w"}
    assert ctx.log == ["canonicalize: forwarded 2 identity copies (clone/alias/detach)",
                       "canonicalize: removed 2 dead nodes and 1 unused params",
                       "canonicalize: 1 graph outputs that are weights (or views of them) are copied"]


def test_lowering_a_convolution_and_restoring_it_gives_the_graph_back():
    from memplan.api import lower
    from memplan.ir.printer import print_graph
    from memplan.analysis.strides import eager_strides
    from memplan.passes.lower_conv import lower_one, restore

    model, x = Block().eval(), torch.randn(1, 8, 20, 20)
    graph = lower(model, (x,))
    before = print_graph(graph)
    conv = next(n for n in graph.nodes if n.op == "aten.convolution.default")
    y, readers = conv.outputs[0], [n for n in graph.nodes if conv.outputs[0] in n.inputs]
    saved = (conv.op, conv.args, conv.kwargs, conv.source_op)
    inserted = lower_one(graph, conv, eager_strides(graph))
    assert [n.op for n in inserted] == ["aten.im2col.default", "aten.view.default", "aten.view.default",
                                        "aten.view.default", "aten.addmm.default"]
    at = graph.nodes.index(conv)
    assert graph.nodes[at - len(inserted):at] == inserted
    assert conv.op == "aten.view.default" and conv.outputs == (y,) and y.producer is conv
    assert all(y in n.inputs for n in readers), "readers of the convolution's output are unchanged"
    restore(graph, conv, inserted, saved)
    assert print_graph(graph) == before
