"""Liveness: live ranges, per-step bytes, peak, views extending their base."""
from memplan.ir.parser import parse
from memplan.analysis.liveness import liveness

CHAIN = """
graph chain(%x: f32[256]) {
  %a: f32[256] = aten.relu.default(%x)
  %b: f32[256] = aten.neg.default(%a)
  %v: f32[16, 16] = aten.view.default(%a, [16, 16])
  %c: f32[256] = aten.exp.default(%b)
  %d: f32[16, 16] = aten.sigmoid.default(%v)
  return %c, %d
}
"""


def test_ranges_peak_and_view_extends_base():
    g = parse(CHAIN)
    live = liveness(g)
    assert live.alias_of == {"v": "a"}
    a, b, c, d = (live.ranges[n] for n in "abcd")
    assert (a.start, a.end) == (0, 4), "the view %v is read at step 4, so %a's bytes live until then"
    assert (b.start, b.end) == (1, 3)
    assert (c.start, c.end) == (3, 4) and (d.start, d.end) == (4, 4), "outputs live to the end"
    assert "v" not in live.ranges, "a view owns no bytes"
    assert live.live_bytes == [1024, 2048, 2048, 3072, 3072]
    assert live.peak_bytes == 3072 and live.peak_step == 3
    assert {r.value for r in live.live_at_peak} == {"a", "b", "c"}
    assert live.resident_bytes == 1024


def test_order_changes_peak():
    g = parse("""
graph fan(%x: f32[100]) {
  %big1: f32[1000] = aten.repeat.default(%x, [10])
  %s1: f32[] = aten.sum.default(%big1)
  %big2: f32[1000] = aten.repeat.default(%x, [10])
  %s2: f32[] = aten.sum.default(%big2)
  %y: f32[] = aten.add.Tensor(%s1, %s2)
  return %y
}""")
    good = liveness(g).peak_bytes
    bad = liveness(g, ["big1", "big2", "s1", "s2", "y"]).peak_bytes
    assert good == 4008 and bad == 8004
