"""A planned ``.mir`` is untrusted input: hostile plans, names and sizes against the checker
(``verify_plan``), the PyTorch backend and ``memplan show``.

The tests named for a bug assert the correct behaviour (a typed rejection, or a run that
matches the reference interpreter and leaves the caller's tensors alone); the others pin
attacks that are handled today.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import warnings
from contextlib import contextmanager

import pytest
import torch

import memplan
from memplan.analysis.check import verify_plan
from memplan.api import CompiledModule
from memplan.errors import MemplanError, PlanVerificationError
from memplan.ir.graph import Graph
from memplan.ir.interpret import run_graph
from memplan.ir.parser import parse
from memplan.ir.types import TensorType
from memplan.ir.verify import verify
from memplan.plan import Plan
from memplan.target import load_target

X = torch.arange(16, dtype=torch.float32).reshape(4, 4) - 5

HDR = """  attr main_tier = "dram"
  storage %storage_dram = memplan.storage("dram", 128)
"""


def _module(text: str, target: str = "cpu", *, type_check: bool = True) -> CompiledModule:
    graph = parse(text)
    if type_check:
        verify(graph)
    return CompiledModule(graph, Plan.from_graph(graph, verify_plan(graph)), load_target(target), [])


def _rejected_or_correct(text: str, inputs, target: str = "cpu") -> None:
    """The plan is refused with a typed error, or it runs to the reference result and leaves the
    caller's inputs as they were."""
    try:
        cm = _module(text, target)
    except MemplanError:
        return
    given = [x.clone() for x in inputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = cm(*given)
    got = got if isinstance(got, tuple) else (got,)
    ref = run_graph(parse(text), [x.clone() for x in inputs], {})
    for g, r in zip(got, ref):
        assert torch.equal(g, r), "the checker accepted a plan that computes a wrong result"
    for g, x in zip(given, inputs):
        assert torch.equal(g, x), "the compiled plan wrote into the caller's input"


@contextmanager
def _time_limit(seconds: int):
    def _raise(*_):
        raise TimeoutError(f"took more than {seconds} s")
    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- bugs: plans that run wrong


def test_onnx_einsum_permutation_result_is_not_freed_with_its_input():
    """ONNX Einsum 'ij->ji' lowers to aten.einsum, planned as a kernel-owned value; torch returns a
    *view* of the input, whose slot is then reused while the einsum result is still read."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Relu", ["X"], ["A"]),
             helper.make_node("Einsum", ["A"], ["E"], equation="ij->ji"),
             helper.make_node("Neg", ["X"], ["C"]),
             helper.make_node("Add", ["E", "C"], ["Y"])]
    graph = helper.make_graph(nodes, "ein", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    want = torch.relu(X).t() - X
    for allocation in ("auto", "storage", "free"):
        cm = memplan.compile(model, (X,), options={"allocation": allocation})
        assert torch.equal(cm(X.clone()), want), allocation


@pytest.mark.parametrize("call", [
    "aten.reshape.default(%a, [4, 4])",          # a view when the layout allows
    "aten.to.dtype(%a, torch.float32)",          # returns self when nothing changes
    "aten.einsum.default('ij->ij', [%a])",       # a permutation einsum is a view
])
def test_checker_rejects_kernel_owned_result_that_aliases_a_slot(call):
    _rejected_or_correct(f"""graph g(%x: f32[4, 4]@dram) {{
{HDR}  %a: f32[4, 4]@dram slot(%storage_dram, 0, [4, 1]) = aten.relu.default(%x)
  %r: f32[4, 4]@dram kernel = {call}
  %b: f32[4, 4]@dram slot(%storage_dram, 0, [4, 1]) = aten.neg.default(%x)
  %o: f32[4, 4]@dram kernel = aten.add.Tensor(%r, %b)
  return %o
}}""", [X])


def test_out_overload_cannot_write_into_the_callers_input():
    """``aten.*.out`` overloads pass the registry; the checker does not know ``out=`` is written."""
    _rejected_or_correct("""graph g(%x: f32[4, 4]@dram) {
  %o: f32[4, 4]@dram kernel = aten.neg.out(%x, out=%x)
  return %o
}""", [X])


def test_group_returning_its_input_is_an_alias_not_a_new_value():
    """A group whose body returns its input: the checker takes the result for kernel-owned bytes,
    so an in-place write over it passes and overwrites the caller's input."""
    _rejected_or_correct("""graph g(%x: f32[4, 4]@dram) {
  %r: f32[4, 4]@dram kernel = memplan.group(%x) graph body(%i: f32[4, 4]@dram) {
    return %i
  }
  %o: f32[4, 4]@dram = aten.neg.default(%r) reuses(%r)
  return %o
}""", [X])


def test_group_returning_a_view_of_a_slot_keeps_the_slot_alive():
    _rejected_or_correct(f"""graph g(%x: f32[4, 4]@dram) {{
{HDR}  %a: f32[4, 4]@dram slot(%storage_dram, 0, [4, 1]) = aten.relu.default(%x)
  %r: f32[4, 4]@dram kernel = memplan.group(%a) graph body(%i: f32[4, 4]@dram) {{
    %t: f32[4, 4]@dram = aten.permute.default(%i, [1, 0])
    return %t
  }}
  %b: f32[4, 4]@dram slot(%storage_dram, 0, [4, 1]) = aten.neg.default(%x)
  %o: f32[4, 4]@dram kernel = aten.add.Tensor(%r, %b)
  return %o
}}""", [X])


def test_view_base_is_self_even_when_passed_by_keyword_after_another_tensor():
    """storage_roots takes a view's first Value as its base: ``view_as(other=%x, self=%a)`` is
    taken for a view of %x, so %a's slot is reused while the view is still read."""
    _rejected_or_correct(f"""graph g(%x: f32[4, 4]@dram) {{
{HDR}  %a: f32[4, 4]@dram slot(%storage_dram, 0, [4, 1]) = aten.relu.default(%x)
  %v: f32[4, 4]@dram = aten.view_as.default(other=%x, self=%a)
  %b: f32[4, 4]@dram slot(%storage_dram, 0, [4, 1]) = aten.neg.default(%x)
  %o: f32[4, 4]@dram kernel = aten.add.Tensor(%v, %b)
  return %o
}}""", [X])


def test_as_strided_view_cannot_reach_past_its_base_into_a_neighbour():
    """An as_strided view of a 16-byte slot spanning 80 bytes, written in place: it overwrites the
    live neighbour %b (the reference interpreter refuses the view)."""
    text = f"""graph g(%x: f32[4, 4]@dram) {{
{HDR}  %a: f32[4]@dram slot(%storage_dram, 0, [1]) = aten.sum.dim_IntList(%x, [0])
  %b: f32[4, 4]@dram slot(%storage_dram, 64, [4, 1]) = aten.neg.default(%x)
  %v: f32[20]@dram = aten.as_strided.default(%a, [20], [1])
  %w: f32[20]@dram = aten.add.Tensor(%v, 1) reuses(%v)
  %o: f32[4, 4]@dram kernel = aten.add.Tensor(%b, 0)
  return %o
}}"""
    try:
        cm = _module(text)
    except MemplanError:
        return
    assert torch.equal(cm(X.clone()), -X), "an in-place write through the view overwrote %b"


def test_region_body_storage_counts_against_the_budget():
    """A body may still declare a storage (no slot in it): the backend allocates it on every call of
    the body (1 GiB here), and verify_plan neither rejects it nor counts it under a 1 KiB budget."""
    graph = parse("""graph g(%x: f32[4, 4]@dram) {
  attr main_tier = "dram"
  attr memory_budget = 1024
  %r: f32[4, 4]@dram kernel = memplan.group(%x) graph body(%i: f32[4, 4]@dram) {
    storage %s = memplan.storage("dram", 1073741824)
    %c: f32[4, 4]@dram kernel = aten.add.Tensor(%i, 1)
    return %c
  }
  return %r
}""")
    verify(graph)
    with pytest.raises(PlanVerificationError):
        verify_plan(graph)


def test_storages_get_distinct_python_variables():
    """Storages %a.b (hbm) and %a_b (smem) both print as ``storage_a_b``: the second buffer replaces
    the first, so values the checker keeps in two storages share bytes."""
    _rejected_or_correct("""graph g(%x: f32[4, 4]@hbm) {
  attr main_tier = "hbm"
  storage %a.b = memplan.storage("hbm", 64)
  storage %a_b = memplan.storage("smem", 64)
  %h: f32[4, 4]@hbm slot(%a.b, 0, [4, 1]) = aten.relu.default(%x)
  %s: f32[4, 4]@smem kernel = memplan.copy(%x, src="hbm", dst="smem")
  %n: f32[4, 4]@smem slot(%a_b, 0, [4, 1]) = aten.neg.default(%s)
  %nb: f32[4, 4]@hbm kernel = memplan.copy(%n, src="smem", dst="hbm")
  %o: f32[4, 4]@hbm kernel = aten.add.Tensor(%h, %nb)
  return %o
}""", [X], target="h100")


def test_compiled_module_type_checks_the_graph_it_is_given():
    """CompiledModule runs verify_plan only: declared types are trusted, so a slot typed f32[4]
    that its op writes as f32[8, 4] is resized by out= over the live neighbour %b."""
    text = """graph g(%x: f32[8, 4]@dram) {
  attr main_tier = "dram"
  storage %s = memplan.storage("dram", 192)
  %b: f32[4, 4]@dram slot(%s, 128, [4, 1]) = aten.sigmoid.default(%x)
  %a: f32[4]@dram slot(%s, 64, [1]) = aten.neg.default(%x)
  %o: f32[4, 4]@dram kernel = aten.add.Tensor(%b, 0)
  %p: f32[4]@dram kernel = aten.add.Tensor(%a, 0)
  return %o, %p
}"""
    with pytest.raises(MemplanError):
        _module(text, type_check=False)


# ---------------------------------------------------------------- bugs: resource limits


def _long_lived_graph(n: int) -> Graph:
    g = Graph("g")
    g.attrs["main_tier"] = "dram"
    x = g.add_input("x", TensorType("f32", (16,), "dram"))
    vs = []
    for _ in range(n):
        (v,) = g.add_node("aten.neg.default", (x,), {}, [TensorType("f32", (16,), "dram")], name=f"v{len(vs)}")
        vs.append(v)
    prev = x
    for i, v in enumerate(vs):        # every value is read at the end: all live together
        (prev,) = g.add_node("aten.add.Tensor", (prev, v), {}, [TensorType("f32", (16,), "dram")], name=f"a{i}")
    g.outputs = [prev]
    from memplan.ir.graph import KERNEL, Alloc
    for node in g.nodes:
        for v in node.outputs:
            v.alloc = Alloc(KERNEL)
    return g


def test_verify_plan_is_not_quadratic_in_live_values():
    """_peaks adds each value's bytes step by step over its lifetime (and _check_overlaps rescans
    the active list): 16k long-lived values take ~25 s; a 16 MiB .mir holds ~8x more."""
    graph = _long_lived_graph(16000)
    with _time_limit(8):
        verify_plan(graph)


def test_emitted_names_are_deduplicated_in_linear_time():
    """_Names retries name_1, name_2, ... from 1 for every value whose identifier collides (all
    non-ASCII names map to '_'): 16k such values take ~45 s to emit."""
    letters = [chr(c) for c in range(0x100, 0x30000)
               if chr(c).isidentifier() and ("_" + chr(c)).isidentifier()][:16000]
    g = Graph("g")
    prev = g.add_input("x", TensorType("f32", (4,)))
    for name in letters:
        (prev,) = g.add_node("aten.neg.default", (prev,), {}, [TensorType("f32", (4,))], name=name)
    g.outputs = [prev]
    from memplan.backends.pytorch import emit_python
    with _time_limit(10):
        emit_python(g)


def test_fresh_names_are_linear_time():
    """Graph.fresh_name retries hint_1, hint_2, ... from 1: 16k nodes of one op take ~50 s to name
    (make_node, clone_node and every frontend go through it)."""
    g = Graph("g")
    x = g.add_input("x", TensorType("f32", (4,)))
    with _time_limit(10):
        for _ in range(16000):
            g.add_node("aten.neg.default", (x,), {}, [TensorType("f32", (4,))])


# ---------------------------------------------------------------- what held


@pytest.mark.parametrize("name", ["t", "trip_0", "region_0_x", "torch", "aten", "weights", "run",
                                  "__import__", "memplan_ops", "inf", "None", "lambda", "storage_dram_f32",
                                  "ｔｏｒｃｈ"])
def test_hostile_value_names_emit_safe_code(name):
    cm = _module(f"""graph g(%x: f32[4, 4]@dram) {{
{HDR}  %{name}: f32[4, 4]@dram slot(%storage_dram, 0, [4, 1]) = aten.neg.default(%x)
  %o: f32[4, 4]@dram kernel = aten.add.Tensor(%{name}, 1)
  return %o
}}""")
    assert torch.equal(cm(X.clone()), 1 - X)


def test_overlaps_through_views_and_loop_boundaries_are_caught():
    view_read_later = f"""graph g(%x: f32[4, 4]@dram) {{
{HDR}  %a: f32[4, 4]@dram slot(%storage_dram, 0, [4, 1]) = aten.relu.default(%x)
  %v: f32[16]@dram = aten.view.default(%a, [16])
  %b: f32[4, 4]@dram slot(%storage_dram, 0, [4, 1]) = aten.neg.default(%x)
  %o: f32[16]@dram kernel = aten.add.Tensor(%v, 1)
  return %o, %b
}}"""
    loop_over_own_input = f"""graph g(%x: f32[4, 4]@dram) {{
{HDR}  %a: f32[4, 4]@dram slot(%storage_dram, 0, [4, 1]) = aten.relu.default(%x)
  %r: f32[4, 4]@dram slot(%storage_dram, 0, [4, 1]) = memplan.loop(%a, trips=2, inputs=[["slice", 0, 2, 2]], outputs=[["concat", 0]]) graph body(%i: f32[2, 4]@dram) {{
    %c: f32[2, 4]@dram kernel = aten.neg.default(%i)
    return %c
  }}
  %o: f32[4, 4]@dram kernel = aten.add.Tensor(%r, 1)
  return %o
}}"""
    output_view_of_slot = f"""graph g(%x: f32[4, 4]@dram) {{
{HDR}  %a: f32[4, 4]@dram slot(%storage_dram, 0, [4, 1]) = aten.relu.default(%x)
  %v: f32[4, 4]@dram = aten.permute.default(%a, [1, 0])
  return %v
}}"""
    for text in (view_read_later, loop_over_own_input, output_view_of_slot):
        graph = parse(text)
        verify(graph)
        with pytest.raises(PlanVerificationError):
            verify_plan(graph)


def _show(tmp_path, text: str):
    path = tmp_path / "x.mir"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "memplan.cli", "show", "-q", str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("text", [
    'graph g(%x: f32[4]@dram) {\n  attr memory_budget = "1GiB"\n  %o: f32[4]@dram kernel = aten.neg.default(%x)\n'
    '  return %o\n}\n',
    'graph g(%x: f32[4]@dram) {\n  %o: f32[4]@disk kernel = memplan.copy(src="dram", dst="disk")\n  return %o\n}\n',
    'graph g(%x: f32[4]@dram) {\n  %o: f32[4]@dram kernel = aten.add.Tensor(%x, 1, alpha=__import__)\n'
    '  return %o\n}\n',
    'graph g\u202e(%x: f32[4]@dram) {\n  %o: f32[4]@dram kernel = aten.neg.default(%x)\n  return %o\n}\n',
    'graph g(%x: f32[0, 4]@dram) {\n  storage %s = memplan.storage("dram", 64)\n'
    '  %a: f32[0, 4]@dram slot(%s, 4611686018427387840, [99999999, 7]) = aten.neg.default(%x)\n'
    '  %o: f32[0, 4]@dram kernel = aten.neg.default(%a)\n  return %o\n}\n',
])
def test_show_rejects_bad_plans_in_one_line(tmp_path, text):
    result = _show(tmp_path, text)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("memplan: error:")


def test_show_does_not_allocate_or_run_what_a_plan_claims(tmp_path):
    """A 2**61-byte storage: show verifies without allocating it. A loop of 10**12 trips that tiles
    nothing is refused (one line), since nothing would bound what running it costs."""
    storage = """graph g(%x: f32[4]@dram) {
  storage %s = memplan.storage("dram", 2305843009213693952)
  %a: f32[4]@dram slot(%s, 0, [1]) = aten.neg.default(%x)
  %r: f32[4]@dram own([1]) = aten.neg.default(%a)
  return %r
}
"""
    result = _show(tmp_path, storage)
    assert result.returncode == 0, result.stderr
    loop = storage.replace("%r: f32[4]@dram own([1]) = aten.neg.default(%a)", """%r: f32[4]@dram own([1]) = memplan.loop(%a, trips=1000000000000, inputs=[["slice", 0, 0, 4]], outputs=[["sum"]]) graph body(%i: f32[4]@dram) {
    %c: f32[4]@dram kernel = aten.neg.default(%i)
    return %c
  }""")
    result = _show(tmp_path, loop)
    assert result.returncode == 1 and "a loop tiles at least one input" in result.stderr
    assert result.stderr.count("\n") == 1


class _Odd(torch.nn.Module):
    """Outputs that are views of intermediates, one tensor twice, an input as-is, a weight view."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        h = self.lin(x).relu()
        y = h * 2 + 1
        return h.t(), y, y, x, self.lin.weight[0], (y > 2).to(torch.int64).sum(1), x[:, :0] * 3


def test_pipeline_plans_match_eager_and_their_measured_peak():
    from memplan.profiling import timeline_peak
    torch.manual_seed(0)
    model = _Odd().eval()
    x = torch.randn(4, 8)
    with torch.no_grad():
        want = model(x)
    for allocation in ("auto", "storage", "free"):
        cm = memplan.compile(model, (x,), options={"allocation": allocation})
        given = x.clone()
        got = cm(given)
        assert torch.equal(given, x)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape and torch.allclose(g, w)
        assert timeline_peak(cm, x)["activation_peak"] == cm.plan.stats["planned_peak_bytes"], allocation
