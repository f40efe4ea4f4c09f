"""Every pass on the text IR: a small ``.mir`` in, the pass, the expected ``.mir`` out (structural
equality, as TVM's Before/Expected tests). Whole-model tests live beside these."""
import pytest

import memplan.passes  # noqa: F401  (registers the passes)
from memplan.ir.parser import parse
from memplan.ir.printer import print_graph
from memplan.passes.options import check_options
from memplan.passes.registry import PASSES, PassContext
from memplan.target import load_target

CHAIN = """graph chain(%x: f32[4, 8]) {
  %a: f32[4, 8] = aten.exp.default(%x)
  %b: f32[4, 8] = aten.neg.default(%a)
  %c: f32[4, 8] = aten.mul.Tensor(%b, %x)
  %d: f32[4, 1] = aten.sum.dim_IntList(%c, [1], True)
  return %d
}"""


def run_pass(name: str, text: str, **options):
    graph = parse(text)
    ctx = PassContext(load_target("cpu"), None, check_options([PASSES[name]], options))
    return PASSES[name].fn(graph, ctx)


def assert_same(got, expected_text: str):
    expected = parse(expected_text)
    assert got == expected, f"got:\n{print_graph(got)}\nexpected:\n{print_graph(expected)}"


def test_verify_leaves_the_graph_unchanged():
    assert_same(run_pass("verify", CHAIN), CHAIN)


def test_inplace_chains_elementwise_ops_over_dying_inputs():
    assert_same(run_pass("inplace", CHAIN), """graph chain(%x: f32[4, 8]) {
  %a: f32[4, 8] = aten.exp.default(%x)
  %b: f32[4, 8] = aten.neg.default(%a) reuses(%a)
  %c: f32[4, 8] = aten.mul.Tensor(%b, %x) reuses(%b)
  %d: f32[4, 1] = aten.sum.dim_IntList(%c, [1], True)
  return %d
}""")


def test_inplace_never_overwrites_a_value_read_later_or_a_graph_output():
    text = """graph g(%x: f32[8]) {
  %a: f32[8] = aten.relu.default(%x)
  %b: f32[8] = aten.neg.default(%a)
  %c: f32[8] = aten.add.Tensor(%a, %b)
  %d: f32[8] = aten.exp.default(%c)
  return %d
}"""
    assert_same(run_pass("inplace", text), text.replace("aten.add.Tensor(%a, %b)", "aten.add.Tensor(%a, %b) reuses(%a)")
                .replace("aten.neg.default(%a)", "aten.neg.default(%a)"))


def test_schedule_consumes_each_expansion_before_making_the_next():
    text = """graph fanout(%x: f32[1024]) {
  %a: f32[4096] = aten.repeat.default(%x, [4])
  %b: f32[4096] = aten.repeat.default(%x, [4])
  %sa: f32[] = aten.sum.default(%a)
  %sb: f32[] = aten.sum.default(%b)
  %t: f32[] = aten.add.Tensor(%sa, %sb)
  return %t
}"""
    assert_same(run_pass("schedule", text, measure_scratch=False), """graph fanout(%x: f32[1024]) {
  %a: f32[4096] = aten.repeat.default(%x, [4])
  %sa: f32[] = aten.sum.default(%a)
  %b: f32[4096] = aten.repeat.default(%x, [4])
  %sb: f32[] = aten.sum.default(%b)
  %t: f32[] = aten.add.Tensor(%sa, %sb)
  return %t
}""")


def test_allocate_writes_storage_slots_spaces_and_limits():
    assert_same(run_pass("allocate", run_pass("inplace", CHAIN).__str__(), measure_scratch=False,
                         allocation="storage"), """graph chain(%x: f32[4, 8]@dram) {
  attr target = "cpu"
  attr main_tier = "dram"
  attr capacity.dram = 25769803776
  storage %storage_dram = memplan.storage("dram", 128)
  %a: f32[4, 8]@dram slot(%storage_dram, 0, [8, 1]) = aten.exp.default(%x)
  %b: f32[4, 8]@dram = aten.neg.default(%a) reuses(%a)
  %c: f32[4, 8]@dram = aten.mul.Tensor(%b, %x) reuses(%b)
  %d: f32[4, 1]@dram own([1, 1]) = aten.sum.dim_IntList(%c, [1], True)
  return %d
}""")


def test_allocate_frees_at_last_use_when_that_peaks_lower():
    assert_same(run_pass("allocate", CHAIN, measure_scratch=False, allocation="free"), """graph chain(%x: f32[4, 8]@dram) {
  attr target = "cpu"
  attr main_tier = "dram"
  attr capacity.dram = 25769803776
  %a: f32[4, 8]@dram kernel = aten.exp.default(%x)
  %b: f32[4, 8]@dram kernel = aten.neg.default(%a)
  %c: f32[4, 8]@dram kernel = aten.mul.Tensor(%b, %x)
  %d: f32[4, 1]@dram kernel = aten.sum.dim_IntList(%c, [1], True)
  return %d
}""")


def test_verify_plan_accepts_a_planned_graph_unchanged():
    planned = print_graph(run_pass("allocate", CHAIN, measure_scratch=False, allocation="storage"))
    assert_same(run_pass("verify_plan", planned), planned)
