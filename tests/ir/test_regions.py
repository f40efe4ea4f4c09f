"""Region ops (``memplan.group``, ``memplan.loop``) and recomputed clones: built by hand, run through
the PyTorch backend, compared with the reference interpreter and with the same graph unrolled."""
import pytest
import torch

import memplan
from memplan.analysis.check import verify_plan
from memplan.backends.pytorch import emit_python, load_python
from memplan.errors import IRVerificationError, PlanVerificationError
from memplan.ir.interpret import run_graph
from memplan.ir.parser import parse
from memplan.ir.printer import print_graph
from memplan.ir.verify import verify

LOOP = """graph tiled(%x: f32[8, 16], %w: f32[16]) {
  %y: f32[8, 16] = memplan.loop(%x, %w, trips=4, inputs=[["slice", 0, 2, 2], ["full"]], outputs=[["concat", 0]]) graph body(%xt: f32[2, 16], %wt: f32[16]) {
    %m: f32[2, 16] = aten.mul.Tensor(%xt, %wt)
    %r: f32[2, 16] = aten.relu.default(%m)
    return %r
  }
  %s: f32[2, 16] = memplan.loop(%x, trips=4, inputs=[["slice", 0, 2, 2]], outputs=[["sum"]]) graph total(%xt: f32[2, 16]) {
    %e: f32[2, 16] = aten.exp.default(%xt)
    return %e
  }
  return %y, %s
}"""

UNROLLED = """graph unrolled(%x: f32[8, 16], %w: f32[16]) {
  %m: f32[8, 16] = aten.mul.Tensor(%x, %w)
  %y: f32[8, 16] = aten.relu.default(%m)
  %e: f32[8, 16] = aten.exp.default(%x)
  %v: f32[4, 2, 16] = aten.view.default(%e, [4, 2, 16])
  %s: f32[2, 16] = aten.sum.dim_IntList(%v, [0])
  return %y, %s
}"""

GROUP = """graph fused(%x: f32[8, 16], %y: f32[8, 16]) {
  %d: f32[8, 16], %n: f32[8, 16] = memplan.group(%x, %y) graph body(%a: f32[8, 16], %b: f32[8, 16]) {
    %c: f32[8, 16] = aten.add.Tensor(%a, %b)
    %t: f32[8, 16] = aten.tanh.default(%c)
    %g: f32[8, 16] = aten.neg.default(%c)
    return %t, %g
  }
  return %d, %n
}"""

HALO = """graph conv_rows(%x: f32[1, 1, 10, 8], %w: f32[1, 1, 3, 3]) {
  %y: f32[1, 1, 8, 6] = memplan.loop(%x, %w, trips=4, inputs=[["slice", 2, 2, 4], ["full"]], outputs=[["concat", 2]]) graph rows(%xt: f32[1, 1, 4, 8], %wt: f32[1, 1, 3, 3]) {
    %c: f32[1, 1, 2, 6] = aten.convolution.default(%xt, %wt, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
    return %c
  }
  return %y
}"""


def _run(text, *inputs):
    graph = parse(text)
    verify(graph)
    run = load_python(emit_python(graph))
    got = run({}, *inputs)
    return graph, (got if isinstance(got, tuple) else (got,))


def test_loop_matches_interpreter_and_unrolled_graph():
    x, w = torch.randn(8, 16), torch.randn(16)
    graph, got = _run(LOOP, x, w)
    assert parse(print_graph(graph)) == graph
    expected = run_graph(parse(UNROLLED), [x, w])
    for a, b, c in zip(got, run_graph(graph, [x, w]), expected):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_loop_with_halo_equals_the_whole_convolution():
    x, w = torch.randn(1, 1, 10, 8), torch.randn(1, 1, 3, 3)
    _graph, (got,) = _run(HALO, x, w)
    torch.testing.assert_close(got, torch.nn.functional.conv2d(x, w), rtol=1e-5, atol=1e-5)


def test_group_matches_unrolled_graph():
    x, y = torch.randn(8, 16), torch.randn(8, 16)
    graph, (d, n) = _run(GROUP, x, y)
    torch.testing.assert_close(d, torch.tanh(x + y))
    torch.testing.assert_close(n, -(x + y))


@pytest.mark.parametrize("text,change,message", [
    (LOOP, ("%xt: f32[2, 16], %wt", "%xt: f32[3, 16], %wt"), "body input %xt is typed f32\\[3, 16\\]"),
    (LOOP, ('["slice", 0, 2, 2], ["full"]', '["slice", 0, 3, 2], ["full"]'), "trip 3 reads \\[9, 11\\) of dim 0"),
    (LOOP, ('outputs=[["concat", 0]]', 'outputs=[["stack", 0]]'), "combine must be"),
    (LOOP, ("trips=4, inputs=[[\"slice\", 0, 2, 2], [\"full\"]]", "trips=0, inputs=[[\"slice\", 0, 2, 2], [\"full\"]]"),
     "trips must be at least 1"),
    (LOOP, ('%y: f32[8, 16] = memplan.loop', '%y: f32[6, 16] = memplan.loop'), "output %y is typed f32\\[6, 16\\]"),
    (GROUP, ("%d: f32[8, 16], %n: f32[8, 16] = memplan.group(%x, %y)", "%d: f32[8, 16], %n: f32[8, 16] = memplan.group(%x, %x, %y)"),
     "the body takes 2 inputs, the node passes 3"),
    (GROUP, ("return %t, %g", "return %t"), "the body returns 1 values, the node has 2 outputs"),
])
def test_verifier_rejects_broken_regions(text, change, message):
    broken = text.replace(*change)
    assert broken != text
    with pytest.raises(IRVerificationError, match=message):
        verify(parse(broken))


def test_regions_plan_and_run_through_the_pipeline():
    """A loop's outputs get slots (it writes each trip into them), a group's are kernel-owned; the
    measured peak is the planned one, and the checker accepts the planned IR."""
    from memplan.profiling import timeline_peak
    graph = parse(LOOP)
    cm = memplan.compile(graph, options={"allocation": "storage"})
    x, w = torch.randn(8, 16), torch.randn(16)
    for a, b in zip(cm(x, w), run_graph(parse(LOOP), [x, w])):
        torch.testing.assert_close(a, b)
    loop = cm.graph.nodes[0]
    assert loop.scratch >= 2 * 2 * 16 * 4, "one trip's intermediates are declared scratch of the loop"
    assert timeline_peak(cm, x, w)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]
    assert parse(print_graph(cm.graph)) == cm.graph
    verify_plan(parse(print_graph(cm.graph)))


def test_recomputed_clone_runs_and_is_checked():
    g = parse("""graph g(%x: f32[4, 8]) {
  %a: f32[4, 8] = aten.gelu.default(%x)
  %b: f32[4, 8] = aten.neg.default(%a)
  %c: f32[4, 8] = aten.exp.default(%b)
  %d: f32[4, 8] = aten.mul.Tensor(%c, %a)
  return %d
}""")
    gelu, _neg, _exp, mul = g.nodes
    clone = g.clone_node(gelu, before=mul)
    g.replace_all_uses(gelu.outputs[0], clone.outputs[0], after=clone)
    assert clone.outputs[0].name == "a.r1" and clone.recomputes is gelu.outputs[0]
    text = print_graph(g)
    assert "%a.r1: f32[4, 8] = aten.gelu.default(%x) recomputes(%a)" in text
    again = parse(text)
    assert again == g
    check = verify_plan(again)
    assert check.live_ranges["a"] == (0, 1, 128), "the first %a dies once %b is computed"
    x = torch.randn(4, 8)
    run = load_python(emit_python(again))
    torch.testing.assert_close(run({}, x), torch.exp(-torch.nn.functional.gelu(x)) * torch.nn.functional.gelu(x))
    bad = parse(text.replace("%a.r1: f32[4, 8] = aten.gelu.default(%x)", "%a.r1: f32[4, 8] = aten.relu.default(%x)"))
    with pytest.raises(PlanVerificationError, match="claims to recompute %a"):
        verify_plan(bad)


@pytest.mark.parametrize("allocation", ["storage", "free", "auto"])
def test_loop_and_group_plan_in_every_allocation_mode(allocation):
    text = LOOP.replace("return %y, %s", """%d: f32[8, 16], %n: f32[8, 16] = memplan.group(%y, %x) graph fused(%a: f32[8, 16], %b: f32[8, 16]) {
    %c: f32[8, 16] = aten.add.Tensor(%a, %b)
    %t: f32[8, 16] = aten.tanh.default(%c)
    %g: f32[8, 16] = aten.neg.default(%c)
    return %t, %g
  }
  return %d, %n, %s""")
    from memplan.profiling import timeline_peak
    cm = memplan.compile(parse(text), options={"allocation": allocation})
    x, w = torch.randn(8, 16), torch.randn(16)
    for a, b in zip(cm(x, w), run_graph(parse(text), [x, w])):
        torch.testing.assert_close(a, b)
    assert timeline_peak(cm, x, w)["activation_peak"] <= cm.plan.stats["planned_peak_bytes"]
    group = next(n for n in cm.graph.nodes if n.op == "memplan.group")
    assert all(v.alloc.kind == "kernel" for v in group.outputs)


def test_verify_plan_rejects_a_broken_region():
    cm = memplan.compile(parse(LOOP), options={"allocation": "storage"})
    text = print_graph(cm.graph)
    assert "[['slice', 0, 2, 2], ['full']]" in text
    broken = parse(text.replace("[['slice', 0, 2, 2], ['full']]", "[['slice', 0, 3, 2], ['full']]"))
    with pytest.raises(PlanVerificationError, match="trip 3 reads"):
        verify_plan(broken)
    loop = parse(text)
    from memplan.ir.graph import Alloc
    loop.nodes[0].outputs[0].alloc = Alloc("kernel")
    with pytest.raises(PlanVerificationError, match="needs a buffer"):
        verify_plan(loop)
