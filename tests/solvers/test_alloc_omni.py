"""omnimalloc as an optional portfolio member, the input-order greedy variant, and the benchmark's
conversion of omnimalloc's own sources (``benchmarks/alloc_bench.py``)."""
from __future__ import annotations

import importlib.util
import random
import sys
import time
from pathlib import Path

import pytest

from memplan.solvers import alloc_omni
from memplan.solvers.alloc_greedy import greedy_portfolio, orderings
from memplan.solvers.alloc_instance import PackingInstance
from memplan.solvers.alloc_omni import is_valid_packing, omnimalloc_packing
from memplan.solvers.allocation import Buffer, interval_lower_bound, solve_allocation, validate

HAVE_OMNIMALLOC = importlib.util.find_spec("omnimalloc") is not None
needs_omnimalloc = pytest.mark.skipif(not HAVE_OMNIMALLOC, reason="omnimalloc is not installed")
BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def instance_of(buffers: list[Buffer], alignment: int = 1) -> PackingInstance:
    return PackingInstance([b.lower for b in buffers], [b.upper for b in buffers], [b.size for b in buffers],
                           alignment)


def random_buffers(seed: int, n: int = 60, zero: bool = False) -> list[Buffer]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lower = rng.randrange(100)
        out.append(Buffer(str(i), lower, lower + rng.randint(1, 30), 0 if zero and i % 7 == 0 else rng.randint(1, 500)))
    return out


def bench():
    sys.path.insert(0, str(BENCH))
    try:
        import alloc_bench
    finally:
        sys.path.remove(str(BENCH))
    return alloc_bench


# ----------------------------------------------------------------------------- input order

def test_input_order_is_a_portfolio_variant():
    buffers = random_buffers(1)
    inst = instance_of(buffers)
    assert orderings(inst)["input"]() == list(range(len(buffers)))
    result = greedy_portfolio(inst, target=0)          # target 0: no early stop, every variant runs
    assert "input/best-fit" in result.tried and "input/first-fit" in result.tried


@needs_omnimalloc
def test_input_order_wins_where_it_carries_the_packing():
    """omnimalloc's tiling source lists its tiles in construction order: placed in that order they
    pack at the bound, which no sorted order reaches on this instance (omni:tiling:500)."""
    from omnimalloc.benchmark.sources import TilingSource
    allocations = TilingSource(seed=42).get_variant(500).allocations
    buffers = [Buffer(str(a.id), a.start, a.end, a.size) for a in allocations]
    result = greedy_portfolio(instance_of(buffers))
    assert result.height == interval_lower_bound(buffers) == 1 << 20
    assert result.variant.startswith("input/")


# ----------------------------------------------------------------------------- validity check

def test_is_valid_packing_agrees_with_validate():
    rng = random.Random(3)
    for seed in range(20):
        buffers = random_buffers(seed, n=25, zero=True)
        inst = instance_of(buffers, alignment=4)
        offsets = [rng.randrange(0, 2000, 4 if seed % 2 else 1) for _ in buffers]
        try:
            validate(buffers, offsets, alignment=4)
            expected = True
        except ValueError:
            expected = False
        assert is_valid_packing(inst, offsets) == expected


# ----------------------------------------------------------------------------- omnimalloc member

@needs_omnimalloc
@pytest.mark.parametrize("alignment", [1, 64])
def test_omnimalloc_packing_is_valid_and_aligned(alignment):
    buffers = random_buffers(5, n=80, zero=True)
    inst = instance_of(buffers, alignment)
    found = omnimalloc_packing(inst, time.monotonic() + 2.0)
    assert found is not None
    offsets, name = found
    assert name.startswith("omnimalloc:")
    validate(buffers, offsets, alignment=alignment)


@needs_omnimalloc
def test_omnimalloc_annealing_matches_omnimalloc_itself():
    """The member is omnimalloc's simulated annealing at its defaults: same packing height as its allocator."""
    from omnimalloc import Allocation
    from omnimalloc.allocators import SimulatedAnnealingAllocator

    buffers = random_buffers(7, n=40)
    theirs = SimulatedAnnealingAllocator(timeout=None).allocate(
        tuple(Allocation(id=i, size=b.size, start=b.lower, end=b.upper) for i, b in enumerate(buffers)))
    log: list[str] = []
    omnimalloc_packing(instance_of(buffers), time.monotonic() + 30.0, log=log)
    assert f"omnimalloc simulated_annealing: height {max(a.offset + a.size for a in theirs)}" in log


@needs_omnimalloc
def test_solve_allocation_uses_the_member_when_minimising(monkeypatch):
    calls = []
    real = alloc_omni.omnimalloc_packing

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    import memplan.solvers.allocation as allocation
    monkeypatch.setattr(allocation, "omnimalloc_packing", spy)
    buffers = random_buffers(11, n=120)
    result = solve_allocation(buffers, time_limit=1.0)
    validate(buffers, result.offsets)
    greedy = solve_allocation(buffers, time_limit=1.0, method="greedy")
    if greedy.height > greedy.lower_bound:
        assert len(calls) == 1
    assert result.height <= greedy.height


def test_member_not_used_with_a_capacity_or_greedy(monkeypatch):
    import memplan.solvers.allocation as allocation

    def boom(*args, **kwargs):
        raise AssertionError("omnimalloc member called")

    monkeypatch.setattr(allocation, "omnimalloc_packing", boom)
    buffers = random_buffers(13, n=80)
    bound = interval_lower_bound(buffers)
    for kwargs in ({"capacity": 2 * bound}, {"capacity": bound - 1}, {"method": "greedy"}):
        result = solve_allocation(buffers, time_limit=0.5, **kwargs)
        validate(buffers, result.offsets)


def test_solve_allocation_without_omnimalloc(monkeypatch):
    monkeypatch.setattr(alloc_omni, "_cpp", False)          # as if omnimalloc were not installed
    assert alloc_omni.omnimalloc_module() is None
    buffers = random_buffers(17, n=80)
    assert omnimalloc_packing(instance_of(buffers), time.monotonic() + 1.0) is None
    result = solve_allocation(buffers, time_limit=0.5)
    validate(buffers, result.offsets)
    assert not result.method.startswith("omnimalloc")
    assert not any("omnimalloc" in line for line in result.log)


@needs_omnimalloc
def test_member_failure_is_not_a_solve_failure(monkeypatch):
    class Broken:
        Allocation = staticmethod(lambda **kw: object())

        @staticmethod
        def omni_place(*args):
            raise RuntimeError("boom")

        @staticmethod
        def simulated_annealing_place(*args):
            return []                                      # places nothing: invalid

    monkeypatch.setattr(alloc_omni, "_cpp", Broken)
    buffers = random_buffers(19, n=50)
    log: list[str] = []
    assert omnimalloc_packing(instance_of(buffers), time.monotonic() + 1.0, log=log) is None
    assert any("failed" in line for line in log) and any("invalid" in line for line in log)
    validate(buffers, solve_allocation(buffers, time_limit=0.5).offsets)


# ----------------------------------------------------------------------------- benchmark instances

@needs_omnimalloc
def test_bench_converts_omnimalloc_sources():
    ab = bench()
    rows = ab.omnimalloc_source_instances(quick=True)
    assert {"omni:random:100", "omni:tiling:128", "omni:pinwheel:129"} <= set(rows)
    assert all(name.startswith("omni:") for name in rows)
    from omnimalloc.benchmark.sources import TilingSource
    allocations = TilingSource(seed=ab.OMNI_SEED).get_variant(128).allocations
    buffers = rows["omni:tiling:128"]
    assert [(b.lower, b.upper, b.size) for b in buffers] == [(a.start, a.end, a.size) for a in allocations]
    assert interval_lower_bound(buffers) == TilingSource(seed=ab.OMNI_SEED).get_known_optimum(128)
    # omnimalloc's vector-clock sources are no interval orders: reported, not run
    assert isinstance(rows["omni:two_plus_two:128"], str)


@needs_omnimalloc
def test_bench_half_open_lifetimes_match_omnimalloc():
    """omnimalloc's [start, end) and memplan's [lower, upper) agree on which pairs conflict."""
    from omnimalloc import Allocation
    ab = bench()
    rng = random.Random(23)
    allocations = [Allocation(id=i, size=1, start=(s := rng.randrange(20)), end=s + rng.randint(1, 5))
                   for i in range(30)]
    buffers = ab.omnimalloc_to_buffers(allocations)
    for i in range(30):
        for j in range(30):
            if i != j:
                assert buffers[i].conflicts_with(buffers[j]) == allocations[i].conflicts_with(allocations[j])


@pytest.mark.slow
@needs_omnimalloc
def test_bench_omni_rows_not_above_omnimalloc():
    """The rows that decided the portfolio changes: tiling (input order) and pinwheel (annealing)."""
    ab = bench()
    rows = ab.run_omnimalloc_sources(5.0, False, lambda name: name in ("omni:tiling:500", "omni:pinwheel:129"))
    assert len(rows) == 2
    for row in rows:
        assert row["memplan"][0] <= row["peers"][row["best"]][0], row["name"]
