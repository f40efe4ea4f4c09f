"""eager_strides: a pure analysis, run on fake tensors once per graph version."""
import pytest
import torch
from torch import nn

import memplan
from memplan.ir.graph import Graph
from memplan.ir.types import TensorType
from memplan.analysis import strides as layout
from memplan.analysis.strides import CACHE_SIZE, eager_strides, fake_runs, stride_fingerprint

F = "f32"


@pytest.fixture(autouse=True)
def empty_cache():
    layout.clear_stride_cache()
    yield
    layout.clear_stride_cache()


def small():
    """x[2, 3, 4] -> permute -> relu -> mm with a weight -> graph output."""
    g = Graph("small")
    x = g.add_input("x", TensorType(F, (2, 3, 4)))
    w = g.add_param("w", TensorType(F, (3, 5)), torch.randn(3, 5))
    (p,) = g.add_node("aten.permute.default", (x, [0, 2, 1]), {}, [TensorType(F, (2, 4, 3))], name="p")
    (r,) = g.add_node("aten.relu.default", (p,), {}, [TensorType(F, (2, 4, 3))], name="r")
    (m,) = g.add_node("aten.matmul.default", (r, w), {}, [TensorType(F, (2, 4, 5))], name="m")
    g.outputs = [m]
    return g


def runs_of(fn):
    before = fake_runs()
    out = fn()
    return out, fake_runs() - before


def test_an_unchanged_graph_runs_once():
    g = small()
    first, n1 = runs_of(lambda: eager_strides(g))
    second, n2 = runs_of(lambda: eager_strides(g))
    assert (n1, n2) == (1, 0)
    assert first == second == {"x": (12, 4, 1), "w": (5, 1), "p": (12, 1, 4), "r": (12, 1, 4), "m": (20, 5, 1)}


def test_the_caller_owns_the_result():
    g = small()
    eager_strides(g)["p"] = (0, 0, 0)
    assert eager_strides(g)["p"] == (12, 1, 4)


def test_a_copy_of_the_graph_shares_the_entry():
    """The key is the structure, not the objects: a graph built again the same way is not rerun."""
    eager_strides(small())
    _, n = runs_of(lambda: eager_strides(small()))
    assert n == 0


def _change_op(g):
    g.node("r").op = "aten.sigmoid.default"


def _change_literal(g):
    g.node("p").args = (g.inputs[0], [2, 0, 1])
    for name, shape in (("p", (4, 2, 3)), ("r", (4, 2, 3)), ("m", (4, 2, 5))):
        g.value(name).type = TensorType(F, shape)


def _change_read_value(g):
    (c,) = g.add_node("aten.clone.default", (g.value("p"),), {"memory_format": torch.contiguous_format},
                      [g.value("p").type], name="c", after=g.node("p"))
    g.replace_all_uses(g.value("p"), c, after=c.producer)


def _insert_node(g):
    g.add_node("aten.neg.default", (g.value("r"),), {}, [g.value("r").type], name="n", after=g.node("r"))


def _weight_layout(g):
    g.weights["w"] = torch.randn(5, 3).t()  # same shape and values' type, other strides


def _input_type(g):
    g.inputs[0].type = TensorType(F, (2, 3, 4), "dram")


def _rename_output(g):
    g.value("m").name = "m2"


@pytest.mark.parametrize("rewrite", [_change_op, _change_literal, _change_read_value, _insert_node,
                                     _weight_layout, _input_type, _rename_output])
def test_any_rewrite_runs_the_graph_again(rewrite):
    g = small()
    eager_strides(g)
    rewrite(g)
    got, n = runs_of(lambda: eager_strides(g))
    assert n == 1
    layout.clear_stride_cache()
    assert got == eager_strides(g), "the rerun gives what a fresh run gives"


def test_erasing_a_node_runs_again_and_going_back_to_a_version_does_not():
    g = small()
    (n,) = g.add_node("aten.neg.default", (g.value("r"),), {}, [g.value("r").type], name="n")
    with_n = eager_strides(g)
    g.erase_node(n.producer)
    without, runs = runs_of(lambda: eager_strides(g))
    assert runs == 1 and "n" not in without and with_n["n"] == with_n["r"]
    g.insert_node(n.producer, after=g.node("r"))  # as lower_conv's restore does: back to a known version
    again, runs = runs_of(lambda: eager_strides(g))
    assert runs == 0 and again == with_n


def test_a_literal_keeps_its_type_in_the_key():
    g, h = small(), small()
    g.node("r").op = h.node("r").op = "aten.clamp_min.default"
    g.node("r").args = (g.value("p"), 0)
    h.node("r").args = (h.value("p"), 0.0)
    assert stride_fingerprint(g) != stride_fingerprint(h)


def test_new_weight_values_of_the_same_layout_keep_the_entry():
    g = small()
    eager_strides(g)
    g.weights["w"] = torch.randn(3, 5)
    _, n = runs_of(lambda: eager_strides(g))
    assert n == 0


def test_reordering_or_marking_in_place_keeps_the_entry():
    """Strides do not depend on the (valid) order of the nodes nor on in-place marks."""
    g = Graph("two")
    x = g.add_input("x", TensorType(F, (2, 3)))
    (a,) = g.add_node("aten.relu.default", (x,), {}, [x.type], name="a")
    (b,) = g.add_node("aten.neg.default", (x,), {}, [x.type], name="b")
    (c,) = g.add_node("aten.add.Tensor", (a, b), {}, [x.type], name="c")
    g.outputs = [c]
    first = eager_strides(g)
    g.reorder([b.producer, a.producer, c.producer])
    c.producer.reuses = a
    second, n = runs_of(lambda: eager_strides(g))
    assert n == 0 and second == first


def test_an_order_that_is_not_topological_is_never_served_from_the_cache():
    g = small()
    eager_strides(g)
    p, r, m = g.nodes
    g.reorder([r, p, m])
    assert stride_fingerprint(g) is None
    with pytest.raises(KeyError):
        eager_strides(g)


def test_the_cache_is_bounded():
    graphs = []
    for i in range(CACHE_SIZE + 3):
        g = small()
        g.inputs[0].type = TensorType(F, (2 + i, 3, 4))
        for node in g.nodes:
            node.outputs[0].type = TensorType(F, (2 + i, *node.outputs[0].type.shape[1:]))
        eager_strides(g)
        graphs.append(g)
    assert len(layout._CACHE) == CACHE_SIZE
    _, n_new = runs_of(lambda: eager_strides(graphs[-1]))
    _, n_old = runs_of(lambda: eager_strides(graphs[0]))
    assert (n_new, n_old) == (0, 1), "least recently used first out"


def unviewable():
    """x[2, 3, 4] -> permute -> view [2, 12]: eager cannot view that layout."""
    g = Graph("unviewable")
    x = g.add_input("x", TensorType(F, (2, 3, 4)))
    (p,) = g.add_node("aten.permute.default", (x, [0, 2, 1]), {}, [TensorType(F, (2, 4, 3))], name="p")
    (v,) = g.add_node("aten.view.default", (p, [2, 12]), {}, [TensorType(F, (2, 12))], name="v")
    g.outputs = [v]
    return g


def test_eager_strides_never_changes_the_graph():
    g = unviewable()
    before = str(g)
    with pytest.raises((RuntimeError, ValueError)):
        eager_strides(g)
    assert str(g) == before


def test_repairing_views_is_a_rewrite_whose_run_is_cached():
    from memplan.passes.mkldnn_conv import repair_view_layouts

    g = unviewable()
    strides, n = runs_of(lambda: repair_view_layouts(g))
    assert n == 1
    assert [node.op for node in g.nodes] == ["aten.permute.default", "aten.clone.default", "aten.view.default"]
    assert g.nodes[2].args[0] is g.nodes[1].outputs[0] and g.nodes[1].name == "v_contiguous"
    assert strides["v_contiguous"] == (12, 3, 1) and strides["v"] == (12, 1)
    again, n = runs_of(lambda: eager_strides(g))
    assert n == 0 and again == strides
    layout.clear_stride_cache()
    assert eager_strides(g) == strides, "what the repair cached is what a fresh run gives"


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        z = torch.relu(self.c2(y)) + y
        return self.fc(z.flatten(1)), torch.sigmoid(z)


@pytest.mark.parametrize("options", [{}, {"conv_kernel": "aten", "conv_lowering": "auto"}])
def test_a_compile_never_runs_the_same_graph_version_twice(monkeypatch, options):
    seen = []
    enter = layout.FakeRun.__enter__

    def recording(self):
        seen.append(stride_fingerprint(self.graph))
        return enter(self)
    monkeypatch.setattr(layout.FakeRun, "__enter__", recording)
    model, x = ConvNet().eval(), torch.randn(1, 3, 8, 8)
    cm = memplan.compile(model, (x,), options=options)
    assert seen and None not in seen
    assert len(set(seen)) == len(seen), f"{len(seen)} fake runs on {len(set(seen))} graph versions"
    with torch.no_grad():
        for got, want in zip(cm(x), model(x)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_region_node_is_keyed_by_its_output_types():
    """A node holding a sub-graph is not run: its results are dense buffers of its output types,
    so those types are part of the key."""
    g = Graph("region")
    x = g.add_input("x", TensorType(F, (2, 3)))
    (y,) = g.add_node("memplan.loop", (x,), {}, [TensorType(F, (2, 3))], name="y", subgraph=Graph("body"))
    g.outputs = [y]
    assert eager_strides(g)["y"] == (3, 1)
    y.type = TensorType(F, (2, 3, 4))
    got, n = runs_of(lambda: eager_strides(g))
    assert n == 1 and got["y"] == (12, 4, 1)
