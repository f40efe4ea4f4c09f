"""The roofline cost model: regions cost per trip on the PyTorch backend, once as one kernel elsewhere;
passes break ties of planned peak by it."""
from memplan.analysis.cost import modelled_seconds
from memplan.ir.parser import parse
from memplan.passes.fusion import better_plan
from memplan.passes.registry import PassContext
from memplan.target import load_target

UNFUSED = """graph g(%x: f32[4096, 256]) {
  %a: f32[4096, 256] = aten.exp.default(%x)
  %b: f32[4096, 256] = aten.neg.default(%a)
  %c: f32[4096, 256] = aten.mul.Tensor(%b, %x)
  return %c
}"""

FUSED = """graph g(%x: f32[4096, 256]) {
  %c: f32[4096, 256] = memplan.loop(%x, trips=64, inputs=[['slice', 0, 64, 64]], outputs=[['concat', 0]]) graph body(%t: f32[64, 256]) {
    %a: f32[64, 256] = aten.exp.default(%t)
    %b: f32[64, 256] = aten.neg.default(%a)
    %c: f32[64, 256] = aten.mul.Tensor(%b, %t)
    return %c
  }
  return %c
}"""


class OneKernel:
    name = "one-kernel"
    one_kernel_regions = True


def test_a_region_is_one_kernel_only_where_the_backend_says_so():
    cpu = load_target("cpu")
    unfused, fused = parse(UNFUSED), parse(FUSED)
    per_trip = modelled_seconds(fused, cpu)
    one = modelled_seconds(fused, cpu, one_kernel_regions=True)
    plain = modelled_seconds(unfused, cpu)
    assert one < plain < per_trip  # one kernel moves 8 MiB instead of 20; 64 trips launch 256 times
    # one kernel: the boundary's bytes (4 MiB in, 4 MiB out) at the tier's bandwidth, one launch
    assert abs(one - (8 * 2**20 / cpu.main_tier.bandwidth + cpu.launch_overhead_s)) < 1e-9


def test_equal_peaks_are_decided_by_modelled_time():
    unfused, fused = parse(UNFUSED), parse(FUSED)
    pytorch = PassContext(load_target("cpu"))
    triton_like = PassContext(load_target("cpu"), backend=OneKernel())
    assert not better_plan(pytorch, (100, fused), (100, unfused))
    assert better_plan(triton_like, (100, fused), (100, unfused))
    assert better_plan(pytorch, (99, fused), (100, unfused))  # a lower peak wins whatever the time
    assert not better_plan(triton_like, (101, fused), (100, unfused))
    assert not better_plan(triton_like, (None, fused), (100, unfused))
