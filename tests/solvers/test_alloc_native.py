"""The compiled exact allocator (MiniMalloc's search in C++): answers, proofs, limits, loading."""
from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.solvers.test_allocation import tiling

from memplan.solvers import alloc_native
from memplan.solvers.alloc_csv import read_buffers_csv
from memplan.solvers.alloc_instance import PackingInstance
from memplan.solvers.alloc_native import DISABLE, native_available, native_search
from memplan.solvers.alloc_search import preorders, search_packing
from memplan.solvers.allocation import Buffer, interval_lower_bound, solve_allocation, validate

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "minimalloc"

needs_native = pytest.mark.skipif(not native_available(), reason=f"no native kernel: {alloc_native.native_status()}")


def instance_of(buffers: list[Buffer], alignment: int = 1) -> PackingInstance:
    return PackingInstance([b.lower for b in buffers], [b.upper for b in buffers], [b.size for b in buffers],
                           alignment)


def random_buffers(rng: random.Random, n: int, horizon: int, max_size: int, zero: bool = True) -> list[Buffer]:
    out = []
    for i in range(n):
        lower = rng.randrange(horizon)
        upper = rng.randint(lower + 1, horizon)
        out.append(Buffer(f"b{i}", lower, upper, rng.randint(0 if zero else 1, max_size)))
    return out


def brute_force_fits(buffers: list[Buffer], capacity: int, alignment: int = 1) -> bool:
    """Whether a packing within ``capacity`` exists: every aligned offset of every buffer, tried
    with bitmasks of occupied bytes per time step (no pruning beyond the overlap test)."""
    horizon = max((b.upper for b in buffers), default=0)
    items = sorted((b for b in buffers if b.size > 0), key=lambda b: -b.size)
    if any(b.size > capacity for b in items):
        return False
    used = [0] * horizon

    def place(k: int) -> bool:
        if k == len(items):
            return True
        b = items[k]
        mask = (1 << b.size) - 1
        for o in range(0, capacity - b.size + 1, alignment):
            m = mask << o
            if all(not used[t] & m for t in range(b.lower, b.upper)):
                for t in range(b.lower, b.upper):
                    used[t] |= m
                if place(k + 1):
                    return True
                for t in range(b.lower, b.upper):
                    used[t] &= ~m
        return False

    return place(0)


def check_packing(buffers: list[Buffer], offsets: list[int], capacity: int, alignment: int) -> None:
    validate(buffers, offsets, capacity=capacity, alignment=alignment)


# ----------------------------------------------------------------------------- answers

@needs_native
@pytest.mark.parametrize("alignment", [1, 2, 4])
def test_native_agrees_with_brute_force_on_small_random_instances(alignment):
    rng = random.Random(1000 + alignment)
    agreed = {True: 0, False: 0}
    for _ in range(150):
        buffers = random_buffers(rng, rng.randint(1, 6), horizon=6, max_size=5)
        inst = instance_of(buffers, alignment)
        bound = interval_lower_bound(buffers, alignment)
        for capacity in range(max(bound - 1, 0), bound + 4):
            expected = brute_force_fits(buffers, capacity, alignment)
            run = native_search(inst, capacity, time_limit=5.0)
            assert run.status == ("found" if expected else "infeasible"), (buffers, capacity, alignment)
            if expected:
                check_packing(buffers, run.offsets, capacity, alignment)
            agreed[expected] += 1
    assert agreed[True] > 100 and agreed[False] > 100      # both answers were exercised


@needs_native
@pytest.mark.parametrize("feature", sorted(DISABLE))
def test_every_pruning_rule_can_be_turned_off_without_changing_answers(feature):
    rng = random.Random(7)
    for _ in range(40):
        buffers = random_buffers(rng, rng.randint(1, 6), horizon=6, max_size=5)
        inst = instance_of(buffers, 2)
        bound = interval_lower_bound(buffers, 2)
        for capacity in (bound, bound + 1, bound + 3):
            expected = brute_force_fits(buffers, capacity, 2)
            for heuristics in (("WAT", "TAW", "TWA"), ("TWA",)):
                run = native_search(inst, capacity, 5.0, heuristics=heuristics, disable=DISABLE[feature])
                assert run.status == ("found" if expected else "infeasible"), (feature, buffers, capacity)
                if expected:
                    check_packing(buffers, run.offsets, capacity, 2)


@needs_native
def test_native_agrees_with_the_python_search_on_medium_instances():
    rng = random.Random(3)
    for _ in range(25):
        buffers = random_buffers(rng, rng.randint(8, 18), horizon=12, max_size=40, zero=False)
        inst = instance_of(buffers)
        order = preorders(inst)["total/area/length"]
        bound = inst.lower_bound()
        for capacity in (bound, bound + 5, bound + 15):
            python = search_packing(inst, capacity, order, 200_000, time.monotonic() + 5)
            native = native_search(inst, capacity, 5.0)
            if python.status in ("found", "infeasible"):
                assert native.status == python.status, (buffers, capacity)
            if native.status == "found":
                check_packing(buffers, native.offsets, capacity, 1)


# ----------------------------------------------------------------------------- proofs

@needs_native
def test_native_proves_infeasibility_beyond_the_interval_bound():
    # with 4-byte alignment the bound says 9, but 'a' (6) and 'c' (1) at time 4 need 10
    buffers = [Buffer("a", 4, 5, 6), Buffer("b", 2, 3, 3), Buffer("c", 3, 5, 1), Buffer("d", 0, 4, 1),
               Buffer("e", 2, 4, 4)]
    inst = instance_of(buffers, 4)
    assert inst.lower_bound() == 9
    assert native_search(inst, 9, 1.0).status == "infeasible"
    found = native_search(inst, 10, 1.0)
    assert found.status == "found"
    check_packing(buffers, found.offsets, 10, 4)
    # three buffers live at once that no order packs in 2 * 3 bytes: the bound (6) holds, no packing does
    pairs = [Buffer("x", 0, 2, 3), Buffer("y", 1, 3, 3), Buffer("z", 0, 3, 1), Buffer("w", 2, 4, 3)]
    inst = instance_of(pairs)
    bound = inst.lower_bound()
    assert native_search(inst, bound, 1.0).status == ("found" if brute_force_fits(pairs, bound) else "infeasible")


@needs_native
def test_capacity_below_the_cross_section_bound_is_refused_without_search():
    buffers = [Buffer(str(i), i, i + 3, 10) for i in range(20)]
    inst = instance_of(buffers)
    run = native_search(inst, inst.lower_bound() - 1, 1.0)
    assert run.status == "infeasible" and run.nodes == 0
    started = time.monotonic()
    result = solve_allocation(buffers, capacity=inst.lower_bound() - 1, time_limit=10.0)
    assert result.status == "infeasible" and time.monotonic() - started < 2.0


@needs_native
def test_empty_zero_size_and_single_buffer_instances():
    assert native_search(instance_of([]), 0, 1.0).status == "found"
    zeros = [Buffer("a", 0, 5, 0), Buffer("b", 1, 2, 0)]
    run = native_search(instance_of(zeros), 0, 1.0)
    assert run.status == "found" and run.offsets == [0, 0]
    mixed = zeros + [Buffer("c", 0, 3, 7), Buffer("d", 2, 4, 5)]
    run = native_search(instance_of(mixed, 4), 16, 1.0)
    assert run.status == "found"
    check_packing(mixed, run.offsets, 16, 4)
    assert native_search(instance_of(mixed, 4), 11, 1.0).status == "infeasible"   # 7 -> 8, then 5


# ----------------------------------------------------------------------------- limits

@needs_native
def test_timeout_is_honoured_on_a_hard_instance():
    buffers = read_buffers_csv(DATA / "A.1048576.csv")       # about 2 s of search to fit 1 MiB
    inst = instance_of(buffers)
    started = time.monotonic()
    run = native_search(inst, 1048576, time_limit=0.05)
    assert run.status == "timeout" and run.offsets is None
    assert time.monotonic() - started < 0.5
    run = native_search(inst, 1048576, time_limit=10.0, max_nodes=500)
    assert run.status == "node-limit" and run.nodes <= 501
    started = time.monotonic()
    result = solve_allocation(buffers, capacity=1048576, time_limit=0.3)
    assert time.monotonic() - started < 1.5
    validate(buffers, result.offsets)


@needs_native
def test_a_challenging_minimalloc_instance_fits_in_one_mib():
    buffers = read_buffers_csv(DATA / "C.1048576.csv")       # the quickest of A..K here (~0.3 s)
    started = time.monotonic()
    result = solve_allocation(buffers, capacity=1048576, time_limit=10.0)
    elapsed = time.monotonic() - started
    assert result.fits and result.status in ("optimal", "feasible")
    validate(buffers, result.offsets, capacity=1048576)
    assert elapsed < 5.0
    assert any("exact search: native" in line for line in result.log)


@needs_native
def test_minimising_without_a_capacity_reaches_the_optimum_of_a_tiling():
    buffers = tiling(30, 64, 20, seed=5)
    result = solve_allocation(buffers, time_limit=5.0)
    assert result.height == 64 and result.status == "optimal"
    validate(buffers, result.offsets)


# ----------------------------------------------------------------------------- loading

def _reset(monkeypatch):
    monkeypatch.setattr(alloc_native, "_status", None)
    monkeypatch.setattr(alloc_native, "_library", None)
    monkeypatch.setattr(alloc_native, "_warned", False)


def test_turned_off_kernel_falls_back_to_the_python_search(monkeypatch):
    _reset(monkeypatch)
    monkeypatch.setenv("MEMPLAN_NATIVE", "0")
    assert not alloc_native.native_available()
    buffers = [Buffer("a", 4, 5, 6), Buffer("b", 2, 3, 3), Buffer("c", 3, 5, 1), Buffer("d", 0, 4, 1),
               Buffer("e", 2, 4, 4)]
    result = solve_allocation(buffers, capacity=9, alignment=4, time_limit=5.0)
    assert result.status == "infeasible" and result.height == 10
    assert any("pure Python" in line for line in result.log)


def test_kernel_is_compiled_into_the_cache_when_not_installed(monkeypatch, tmp_path):
    if alloc_native._compiler() is None:
        pytest.skip("no C++ compiler")
    _reset(monkeypatch)
    monkeypatch.delenv("MEMPLAN_NATIVE", raising=False)
    monkeypatch.setenv("MEMPLAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(alloc_native, "_installed_library", lambda: None)
    assert alloc_native.native_available(), alloc_native.native_status()
    assert "compiled into" in alloc_native.native_status()
    assert list((tmp_path / "native").glob("libmemplan_minimalloc-*.so"))
    run = native_search(instance_of([Buffer("a", 0, 2, 3), Buffer("b", 1, 3, 3)]), 6, 1.0)
    assert run.status == "found" and sorted(run.offsets) == [0, 3]


def test_no_compiler_and_no_library_means_the_python_search(monkeypatch, tmp_path, caplog):
    _reset(monkeypatch)
    monkeypatch.delenv("MEMPLAN_NATIVE", raising=False)
    monkeypatch.setenv("MEMPLAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(alloc_native, "_installed_library", lambda: None)
    monkeypatch.setattr(alloc_native, "_compiler", lambda: None)
    with caplog.at_level("WARNING", logger="memplan.solvers.native"):
        assert not alloc_native.native_available()
    assert "no C++ compiler" in alloc_native.native_status()
    assert any("pure-Python" in r.getMessage() for r in caplog.records)
    result = solve_allocation([Buffer("a", 0, 2, 3), Buffer("b", 1, 3, 3)], capacity=6, time_limit=1.0)
    assert result.fits


def test_a_foreign_library_at_the_kernel_path_falls_back_instead_of_crashing(tmp_path, monkeypatch):
    """A loadable library without the kernel's ABI symbol (or a corrupt file) in the cache is built again."""
    import ctypes.util
    monkeypatch.setattr(alloc_native, "_installed_library", lambda: None)
    monkeypatch.setenv("MEMPLAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(alloc_native, "_status", None)
    monkeypatch.setattr(alloc_native, "_library", None)
    if alloc_native._compiler() is None:
        pytest.skip("no C++ compiler here")
    path = alloc_native._compile_into_cache()
    path.write_bytes(b"garbage")                   # corrupt: must be rebuilt once, not used nor kept
    assert alloc_native.load() is not None, alloc_native.native_status()
    assert path.stat().st_size > 1000


def test_a_capacity_below_the_interval_bound_answers_at_once():
    buffers = read_buffers_csv(DATA / "A.1048576.csv") if (DATA / "A.1048576.csv").is_file() else None
    if buffers is None:
        pytest.skip("challenging instances not vendored")
    start = time.monotonic()
    result = solve_allocation(buffers, capacity=interval_lower_bound(buffers) - 1, time_limit=10)
    assert result.status == "infeasible" and time.monotonic() - start < 1.0
    validate(buffers, result.offsets)
