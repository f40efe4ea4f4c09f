"""Shape inference never allocates what a file claims: factory ops run on the meta device."""

from memplan.ir.parser import parse
from memplan.ir.verify import verify


def test_claimed_factory_output_is_not_allocated():
    # 40 GB if shape inference ran aten.full on the CPU (more than this machine has: it would fail)
    text = """graph g(%x: f32[2]) {
  %y: f32[100000, 100000] = aten.full.default([100000, 100000], 0.0)
  %z: i64[100000] = aten.arange.default(100000)
  %r: f32[2] = aten.relu.default(%x)
  return %r
}"""
    graph = parse(text)
    verify(graph)  # types check out; nothing was allocated for real
    assert str(graph.nodes[0].outputs[0].type) == "f32[100000, 100000]"
