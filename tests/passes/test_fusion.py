"""fuse: elementwise chains become row-tiled loops; never a higher planned peak; reasons for the rest."""
import math

import pytest
import torch
from torch import nn

import memplan
from memplan.errors import IRVerificationError
from memplan.ir.parser import parse
from memplan.ir.printer import print_graph
from memplan.ir.verify import verify
from memplan.passes.fusion import find_groups, fuse_graph
from memplan.profiling import timeline_peak
from tests.passes.test_passes_on_text import assert_same, run_pass

CHAIN = """graph chain(%x: f32[64, 8], %w: f32[8, 8]) {
  %m: f32[64, 8] = aten.mm.default(%x, %w)
  %a: f32[64, 8] = aten.exp.default(%m)
  %b: f32[64, 8] = aten.neg.default(%a)
  %c: f32[64, 8] = aten.mul.Tensor(%b, %m)
  %d: f32[64, 1] = aten.sum.dim_IntList(%c, [1], True)
  return %d
}"""


def test_fuse_on_text_makes_a_row_tiled_loop():
    got = run_pass("fuse", CHAIN, fusion="on", fusion_tile_bytes=512)
    assert_same(got, """graph chain(%x: f32[64, 8], %w: f32[8, 8]) {
  %m: f32[64, 8] = aten.mm.default(%x, %w)
  %c_fused: f32[64, 8] = memplan.loop(%m, trips=4, inputs=[['slice', 0, 16, 16]], outputs=[['concat', 0]]) [fused_a] loc('', 'exp + neg + mul') graph a_body(%m: f32[16, 8]) {
    %a: f32[16, 8] = aten.exp.default(%m)
    %b: f32[16, 8] = aten.neg.default(%a) reuses(%a)
    %c: f32[16, 8] = aten.mul.Tensor(%b, %m)
    return %c
  }
  %d: f32[64, 1] = aten.sum.dim_IntList(%c_fused, [1], True)
  return %d
}""")


def test_a_fused_loop_writes_over_the_input_it_reads_in_lockstep():
    graph = run_pass("fuse", CHAIN, fusion="on", fusion_tile_bytes=512)
    from memplan.passes.registry import PASSES, PassContext
    from memplan.target import load_target
    PASSES["inplace"].fn(graph, PassContext(load_target("cpu")))
    loop = next(n for n in graph.nodes if n.op == "memplan.loop")
    assert loop.reuses is not None and loop.reuses.name == "m"
    assert parse(print_graph(graph)) == graph


def test_a_loop_may_not_write_over_an_input_read_with_a_halo():
    text = """graph g(%x: f32[8, 4]) {
  %m: f32[8, 4] = aten.neg.default(%x)
  %y: f32[8, 4] = memplan.loop(%m, trips=4, inputs=[['slice', 0, 2, 2]], outputs=[['concat', 0]]) reuses(%m) graph body(%t: f32[2, 4]) {
    %e: f32[2, 4] = aten.exp.default(%t)
    return %e
  }
  return %y
}"""
    verify(parse(text))  # lockstep: fine
    halo = text.replace("trips=4, inputs=[['slice', 0, 2, 2]]", "trips=3, inputs=[['slice', 0, 2, 4]]").replace(
        "%t: f32[2, 4]", "%t: f32[4, 4]").replace("%e: f32[2, 4]", "%e: f32[4, 4]").replace(
        "%y: f32[8, 4]", "%y: f32[12, 4]")
    with pytest.raises(IRVerificationError, match="lockstep"):
        verify(parse(halo))


def test_a_node_reading_a_value_computed_from_the_group_outside_it_does_not_join():
    g = parse("""graph g(%x: f32[64, 8], %w: f32[8, 8]) {
  %a: f32[64, 8] = aten.relu.default(%x)
  %b: f32[64, 8] = aten.exp.default(%a)
  %m: f32[64, 8] = aten.mm.default(%a, %w)
  %c: f32[64, 8] = aten.mul.Tensor(%b, %m)
  return %c
}""")
    explain = {}
    groups = find_groups(g, explain)
    assert [[m.name for m in grp.members] for grp in groups] == [["a", "b"]]
    assert "cycle" in explain["c"]
    fuse_graph(g, tile_bytes=512)
    verify(g)  # still a well-formed graph in topological order


class Gelu(nn.Module):
    """GPT-2's tanh gelu between two linears: eight elementwise ops over the hidden activation."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(64, 256), nn.Linear(256, 64)

    def forward(self, x):
        h = self.up(x)
        h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))
        return self.down(h) + x


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_fusion_lowers_the_planned_peak_and_the_measured_one_equals_it(mode):
    model, x = Gelu().eval(), torch.randn(2, 128, 64)
    # activations="off": the chain stays eight ops (by default it becomes one aten.gelu)
    plain = memplan.compile(model, (x,), options={"fusion": "off", "activations": "off"})
    cm = memplan.compile(model, (x,), options={"fusion": mode, "activations": "off"})
    assert cm.plan.fusion, cm.log
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-5, atol=1e-5)
    planned = cm.plan.stats["planned_peak_bytes"]
    assert planned < plain.plan.stats["planned_peak_bytes"]
    assert timeline_peak(cm, x)["activation_peak"] == planned
    loop = next(n for n in cm.graph.nodes if n.op == "memplan.loop")
    assert loop.reuses is not None, "the fused gelu writes over the linear's output"
    region, members = next(iter(cm.plan.fusion.items()))
    assert cm.plan.why_not_fused(members[0]).startswith(f"fused: it runs in region {region}")


def test_auto_keeps_the_graph_unfused_where_the_peak_would_not_fall():
    model, x = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval(), torch.randn(4, 8)
    cm = memplan.compile(model, (x,))
    assert not cm.plan.fusion
    reasons = cm.plan.stats.get("why_not_fused", {})
    assert any("opaque" in why for why in reasons.values())


def test_a_group_whose_result_eager_lays_out_transposed_is_not_fused():
    class Rope(nn.Module):
        def forward(self, q):
            q = q.transpose(1, 2)  # [b, h, s, d] seen through a permuted layout
            y = q * 2.0 + torch.sin(q)
            return y.transpose(1, 2).reshape(1, 64, 32)
    model, x = Rope(), torch.randn(1, 64, 4, 8)
    cm = memplan.compile(model, (x,), options={"fusion": "on"})
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x))
    assert not cm.plan.fusion
    assert any("row-major" in why for why in cm.plan.stats.get("why_not_fused", {}).values())


def test_cli_explains_fusion(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper as oh
    from memplan.cli import main
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [1024, 64])
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, [1024, 64])
    nodes = [oh.make_node("Exp", ["x"], ["a"], name="e"), oh.make_node("Neg", ["a"], ["b"], name="n"),
             oh.make_node("Mul", ["b", "x"], ["c"], name="m"), oh.make_node("Sqrt", ["c"], ["y"], name="s")]
    path = tmp_path / "chain.onnx"
    onnx.save(oh.make_model(oh.make_graph(nodes, "chain", [x], [y]), opset_imports=[oh.make_opsetid("", 17)]), path)
    assert main(["lower", str(path), "-o", str(tmp_path / "out"), "--explain-fusion", "--option", "fusion=on"]) == 0
    out = capsys.readouterr().out
    assert "fusion: 1 fused regions" in out and "fused_a: a, b, c, y" in out


def test_reduction_groups_take_the_prologue_and_refuse_a_cycle():
    from memplan.passes.reduction_groups import find_reduction_groups
    text = """graph g(%x: f32[4, 8], %y: f32[4, 8]) {
  %a: f32[4, 8] = aten.add.Tensor(%x, %y)
  %b: f32[4, 8] = aten.mul.Tensor(%a, 2.0)
  %s: f32[4, 8] = aten._softmax.default(%b, -1, False)
  return %s, %a
}"""
    (group,) = find_reduction_groups(parse(text))
    assert [n.name for n in group] == ["a", "b", "s"]
    cyclic = """graph g(%x: f32[4, 8]) {
  %a: f32[4, 8] = aten.exp.default(%x)
  %m: f32[4, 8] = aten.mm.default(%a, %a)
  %b: f32[4, 8] = aten.add.Tensor(%a, %m)
  %s: f32[4, 8] = aten._softmax.default(%b, -1, False)
  return %s
}"""
    # exp and add are both elementwise producers, but mm reads exp and feeds add: with exp in the group,
    # the group would read its own result; add alone joins
    (group,) = find_reduction_groups(parse(cyclic))
    assert [n.name for n in group] == ["b", "s"]
