"""Static allocation: bounds, validation, heuristics, exact search, CP-SAT, CSV and CLI."""
from __future__ import annotations

import argparse
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memplan.errors import MemplanError
from memplan.solvers.alloc_cli import AllocationCapacityError, add_alloc_parser
from memplan.solvers.alloc_csv import BufferFileError, read_buffers_csv, write_offsets_csv
from memplan.solvers.alloc_greedy import greedy_portfolio
from memplan.solvers.alloc_instance import PackingInstance, align_up, components
from memplan.solvers.alloc_repair import RepairSearch
from memplan.solvers.alloc_search import minimize_height, preorders, search_packing
from memplan.solvers.allocation import Buffer, interval_lower_bound, solve_allocation, validate


# ----------------------------------------------------------------------------- helpers

@st.composite
def buffer_sets(draw, max_buffers: int = 10, max_time: int = 12, max_size: int = 40):
    n = draw(st.integers(0, max_buffers))
    buffers = []
    for i in range(n):
        lower = draw(st.integers(0, max_time - 1))
        upper = draw(st.integers(lower + 1, max_time))
        size = draw(st.integers(0, max_size))
        buffers.append(Buffer(f"b{i}", lower, upper, size))
    return buffers


def tiling(n: int, height: int, horizon: int, seed: int) -> list[Buffer]:
    """A height x horizon rectangle cut into n pieces: the optimum is ``height``."""
    rng = random.Random(seed)
    tiles = [(0, horizon, height)]
    while len(tiles) < n:
        k = rng.randrange(len(tiles))
        t0, t1, size = tiles[k]
        if t1 - t0 >= 2 and (size < 2 or rng.random() < 0.5):
            cut = rng.randint(t0 + 1, t1 - 1)
            tiles[k:k + 1] = [(t0, cut, size), (cut, t1, size)]
        elif size >= 2:
            cut = rng.randint(1, size - 1)
            tiles[k:k + 1] = [(t0, t1, cut), (t0, t1, size - cut)]
    rng.shuffle(tiles)
    return [Buffer(str(i), t0, t1, size) for i, (t0, t1, size) in enumerate(tiles)]


def sweep_tiling(n: int, height: int, seed: int, unit: int = 16) -> list[Buffer]:
    """A tiling that is not cut in guillotine fashion: step by step, some buffers end and the
    holes they leave (merged with free neighbours) are refilled by 1-3 new ones. Every moment
    holds exactly ``height`` bytes, so the optimum is ``height``."""
    rng = random.Random(seed)
    live = [(0, height, 0)]                                 # (offset, size, start), by offset
    done: list[tuple[int, int, int]] = []
    step = 0
    while len(done) + len(live) < n:
        step += 1
        ending = {k for k in range(len(live)) if rng.random() < 0.3} or {rng.randrange(len(live))}
        kept, holes = [], []
        for k, (offset, size, start) in enumerate(live):
            if k not in ending:
                kept.append((offset, size, start))
                continue
            done.append((start, step, size))
            if holes and holes[-1][1] == offset:
                holes[-1] = (holes[-1][0], offset + size)
            else:
                holes.append((offset, offset + size))
        for lo, hi in holes:
            cuts = sorted(rng.sample(range(lo + unit, hi, unit), k=min(rng.randint(0, 2), (hi - lo) // unit - 1)))
            edges = [lo, *cuts, hi]
            kept += [(a, b - a, step) for a, b in zip(edges, edges[1:])]
        live = sorted(kept)
    done += [(start, step + 1, size) for _, size, start in live]
    rng.shuffle(done)
    return [Buffer(str(i), t0, t1, size) for i, (t0, t1, size) in enumerate(done)]


def instance_of(buffers: list[Buffer], alignment: int = 1) -> PackingInstance:
    return PackingInstance([b.lower for b in buffers], [b.upper for b in buffers], [b.size for b in buffers],
                           alignment)


def run_cli(argv: list[str]) -> int:
    """What ``memplan alloc ...`` exits with: cmd_alloc's status, 1 on a MemplanError."""
    parser = argparse.ArgumentParser(prog="memplan")
    add_alloc_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["alloc", *argv])
    try:
        return args.func(args)
    except MemplanError:
        return 1


# ----------------------------------------------------------------------------- bounds and validation

def test_lower_bound_is_peak_of_live_bytes_with_half_open_lifetimes():
    # [0,2) and [2,4) never meet: the bound is the larger, not the sum
    assert interval_lower_bound([Buffer("a", 0, 2, 10), Buffer("b", 2, 4, 7)]) == 10
    assert interval_lower_bound([Buffer("a", 0, 3, 10), Buffer("b", 2, 4, 7), Buffer("c", 3, 5, 1)]) == 17
    assert interval_lower_bound([]) == 0


def test_lower_bound_with_alignment_rounds_all_but_the_top_buffer():
    buffers = [Buffer("a", 0, 2, 5), Buffer("b", 0, 2, 5)]
    assert interval_lower_bound(buffers) == 10
    assert interval_lower_bound(buffers, alignment=8) == 13   # 8 (a rounded) + 5 (b on top)
    result = solve_allocation(buffers, alignment=8, time_limit=1)
    assert result.height == 13 and result.status == "optimal"


def test_validate_names_the_overlapping_buffers():
    buffers = [Buffer("conv1", 0, 3, 64), Buffer("relu1", 2, 5, 64), Buffer("fc", 5, 6, 64)]
    validate(buffers, {"conv1": 0, "relu1": 64, "fc": 0})
    with pytest.raises(ValueError, match="'conv1'.*'relu1'.*overlap"):
        validate(buffers, {"conv1": 0, "relu1": 32, "fc": 0})
    with pytest.raises(ValueError, match="'relu1'.*capacity 100"):
        validate(buffers, {"conv1": 0, "relu1": 64, "fc": 0}, capacity=100)
    with pytest.raises(ValueError, match="'relu1'.*alignment 48"):
        validate(buffers, {"conv1": 0, "relu1": 64, "fc": 0}, alignment=48)
    with pytest.raises(ValueError, match="'fc' has no offset"):
        validate(buffers, {"conv1": 0, "relu1": 64})


def test_buffer_rejects_empty_lifetime_and_negative_size():
    with pytest.raises(ValueError, match="empty lifetime"):
        Buffer("x", 3, 3, 1)
    with pytest.raises(ValueError, match="negative size"):
        Buffer("x", 0, 1, -1)


def test_components_split_where_no_buffer_crosses():
    inst = PackingInstance([0, 1, 5, 6], [2, 3, 7, 8], [1, 1, 1, 0])
    assert components(inst.lowers, inst.uppers, inst.sizes) == [[0, 1], [2]]


# ----------------------------------------------------------------------------- every method is valid

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(buffers=buffer_sets(), alignment=st.sampled_from([1, 1, 4]))
def test_every_method_returns_a_valid_packing_above_the_bound(buffers, alignment):
    bound = interval_lower_bound(buffers, alignment)
    for method in ("greedy", "search", "cpsat"):
        result = solve_allocation(buffers, time_limit=2.0, alignment=alignment, method=method)
        validate(buffers, result.offsets, alignment=alignment)
        assert result.height >= bound
        assert result.lower_bound >= bound and result.lower_bound <= result.height
        assert result.status in ("optimal", "feasible")
        if result.status == "optimal":
            assert result.gap == 0.0


@settings(max_examples=40, deadline=None)
@given(buffers=buffer_sets(max_buffers=7, max_time=8, max_size=20))
def test_search_and_cpsat_agree_on_the_optimum(buffers):
    search = solve_allocation(buffers, time_limit=5.0, method="search")
    cpsat = solve_allocation(buffers, time_limit=5.0, method="cpsat")
    if search.status == "optimal" and cpsat.status == "optimal":
        assert search.height == cpsat.height
    # the search never claims a proof that CP-SAT can beat
    if search.status == "optimal":
        assert search.height <= cpsat.height


@settings(max_examples=40, deadline=None)
@given(buffers=buffer_sets(max_buffers=8), data=st.data())
def test_capacity_mode_fits_or_says_why(buffers, data):
    best = solve_allocation(buffers, time_limit=2.0)
    bound = interval_lower_bound(buffers)
    capacity = data.draw(st.integers(max(bound - 5, 0), best.height + 5))
    result = solve_allocation(buffers, capacity=capacity, time_limit=1.0)
    validate(buffers, result.offsets)
    if result.status in ("optimal", "feasible"):
        assert result.height <= capacity and result.fits
    else:
        assert result.height > capacity and not result.fits
    if capacity >= best.height:
        assert result.fits
    if capacity < bound:
        assert result.status == "infeasible"
    if best.status == "optimal" and capacity < best.height:
        assert result.status in ("infeasible", "unknown")


# ----------------------------------------------------------------------------- known instances

def test_known_small_optimum_beats_greedy_by_size():
    buffers = [Buffer("a", 0, 3, 3), Buffer("b", 0, 4, 4), Buffer("c", 3, 4, 4), Buffer("d", 0, 1, 4),
               Buffer("e", 2, 4, 2)]
    inst = PackingInstance([b.lower for b in buffers], [b.upper for b in buffers], [b.size for b in buffers])
    from memplan.solvers.alloc_greedy import orderings, place_in_order
    assert inst.height(place_in_order(inst, orderings(inst)["size"]())) == 13
    result = solve_allocation(buffers, time_limit=5.0)
    validate(buffers, result.offsets)
    assert interval_lower_bound(buffers) == 11
    assert result.height == 11 and result.status == "optimal"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_reaches_the_optimum_of_cut_rectangles(seed):
    buffers = tiling(24, height=64, horizon=20, seed=seed)
    assert interval_lower_bound(buffers) == 64
    result = solve_allocation(buffers, time_limit=20.0, method="search")
    validate(buffers, result.offsets)
    assert result.height == 64 and result.status == "optimal"
    fit = solve_allocation(buffers, capacity=64, time_limit=20.0)
    assert fit.fits and fit.status == "optimal"


def test_search_proves_a_capacity_infeasible():
    # with 4-byte alignment the bound says 9, but 'a' (6) and 'c' (1) at time 4 need 10:
    # c under a pushes a to 4; a under c pushes c to 8, and 'd' below forces that order
    buffers = [Buffer("a", 4, 5, 6), Buffer("b", 2, 3, 3), Buffer("c", 3, 5, 1), Buffer("d", 0, 4, 1),
               Buffer("e", 2, 4, 4)]
    assert interval_lower_bound(buffers, alignment=4) == 9
    inst = PackingInstance([b.lower for b in buffers], [b.upper for b in buffers], [b.size for b in buffers],
                           alignment=4)
    for order in preorders(inst).values():
        assert search_packing(inst, 10, order, 10_000, float("inf")).status == "found"
        assert search_packing(inst, 9, order, 10_000, float("inf")).status == "infeasible"
    result = solve_allocation(buffers, capacity=9, alignment=4, time_limit=2.0)
    assert result.status == "infeasible" and not result.fits and result.height == 10
    best = solve_allocation(buffers, alignment=4, time_limit=2.0)
    assert best.height == 10 and best.lower_bound == 10 and best.status == "optimal"   # the proof raised the bound
    assert solve_allocation(buffers, alignment=4, method="cpsat", time_limit=5.0).height == 10


def test_minimize_height_improves_a_bad_incumbent():
    buffers = tiling(30, height=100, horizon=30, seed=7)
    inst = PackingInstance([b.lower for b in buffers], [b.upper for b in buffers], [b.size for b in buffers])
    stacked = []
    top = 0
    for s in inst.sizes:   # every buffer on top of the previous: valid, very tall
        stacked.append(top)
        top += s
    out = minimize_height(inst, stacked, 100, stop_at=100, deadline=float("inf"))
    assert out.improved and out.height == 100


# ----------------------------------------------------------------------------- repair search

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(buffers=buffer_sets(max_buffers=12), alignment=st.sampled_from([1, 1, 4]), seed=st.integers(0, 3),
       data=st.data())
def test_repair_packings_are_valid_and_within_the_capacity(buffers, alignment, seed, data):
    inst = instance_of(buffers, alignment)
    bound = interval_lower_bound(buffers, alignment)
    stacked, top = [], 0
    for size in inst.sizes:                  # every buffer on top of the previous: valid, tall
        stacked.append(top)
        top = align_up(top + size, alignment)
    repair = RepairSearch(inst, seed=seed, max_evictions=200)
    capacity = data.draw(st.integers(max(inst.sizes, default=0), max(inst.height(stacked), 1)))
    packed = repair.pack(capacity, float("inf"))
    if packed is not None:
        validate(buffers, packed, capacity=capacity, alignment=alignment)
    lowered, _ = repair.lower(stacked, bound, bound, time.monotonic() + 0.2)
    validate(buffers, lowered, alignment=alignment)
    assert bound <= inst.height(lowered) <= inst.height(stacked)


@pytest.mark.parametrize("seed", [0, 1, 4])
def test_repair_packs_a_sweep_tiling_at_its_optimum_deterministically(seed):
    buffers = sweep_tiling(40, height=1024, seed=seed)
    inst = instance_of(buffers)
    assert inst.lower_bound() == 1024
    stacked = [sum(inst.sizes[:i]) for i in range(len(inst))]
    packings = []
    for _ in range(2):
        repair = RepairSearch(inst, seed=0)
        offsets, log = repair.lower(stacked, 1024, 1024, float("inf"), fixed_capacity=True)
        validate(buffers, offsets, capacity=1024)
        assert log and "repair packed in 1024" in log[-1]
        packings.append(offsets)
    assert packings[0] == packings[1]        # same seed, same choices


@pytest.mark.parametrize("seed", [1, 3])
def test_portfolio_reaches_the_optimum_of_sweep_tilings(seed):
    buffers = sweep_tiling(40, height=1024, seed=seed)
    result = solve_allocation(buffers, time_limit=20.0, seed=seed)
    validate(buffers, result.offsets)
    assert result.height == 1024 and result.status == "optimal"
    fit = solve_allocation(buffers, capacity=1024, time_limit=20.0, seed=seed)
    validate(buffers, fit.offsets, capacity=1024)
    assert fit.status == "optimal"


def test_greedy_handles_ten_thousand_model_like_buffers():
    rng = random.Random(0)
    buffers = [Buffer(str(i), i, i + rng.choice([2, 2, 3, 8]), rng.choice([64, 128, 256]) * 1024)
               for i in range(10_000)]
    inst = PackingInstance([b.lower for b in buffers], [b.upper for b in buffers], [b.size for b in buffers])
    result = greedy_portfolio(inst, time_budget=1.0)
    validate(buffers, result.offsets)
    assert result.height >= inst.lower_bound()


def test_zero_size_and_empty_instances():
    assert solve_allocation([]).height == 0
    result = solve_allocation([Buffer("z", 0, 5, 0), Buffer("a", 1, 2, 8)])
    assert result.height == 8 and result.offsets["z"] == 0 and result.status == "optimal"


def test_solve_allocation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="appears more than once"):
        solve_allocation([Buffer("a", 0, 1, 1), Buffer("a", 1, 2, 1)])
    with pytest.raises(ValueError, match="unknown allocation method"):
        solve_allocation([], method="magic")


# ----------------------------------------------------------------------------- CSV

def test_csv_round_trip(tmp_path):
    buffers = tiling(12, height=32, horizon=10, seed=3)
    src = tmp_path / "in.csv"
    src.write_text("id,lower,upper,size\n" + "".join(f"{b.id},{b.lower},{b.upper},{b.size}\n" for b in buffers))
    assert read_buffers_csv(src) == buffers
    result = solve_allocation(buffers, time_limit=2.0)
    out = tmp_path / "out.csv"
    write_offsets_csv(out, buffers, result.offsets)
    lines = out.read_text().splitlines()
    assert lines[0] == "id,lower,upper,size,offset"
    assert read_buffers_csv(out) == buffers              # the offset column is ignored on input
    offsets = {line.split(",")[0]: int(line.split(",")[4]) for line in lines[1:]}
    validate(buffers, offsets)


@pytest.mark.parametrize("text, message", [
    ("", r"empty file"),
    ("id,lower,size\na,0,1\n", r"x\.csv:1: .*lacks column\(s\) upper"),
    ("id,lower,upper,size\na,0,2,64\nb,zero,2,8\n", r"x\.csv:3: field 'lower' is 'zero', not an integer"),
    ("id,lower,upper,size\na,4,4,64\n", r"x\.csv:2: field 'upper' \(4\) must be greater than 'lower' \(4\)"),
    ("id,lower,upper,size\na,0,1,-5\n", r"x\.csv:2: field 'size' is negative \(-5\)"),
    ("id,lower,upper,size\na,0,1,5\na,1,2,5\n", r"x\.csv:3: id 'a' already used on line 2"),
    ("id,lower,upper,size\na,0,1\n", r"x\.csv:2: 3 field\(s\), expected 4"),
])
def test_csv_errors_name_file_line_and_field(tmp_path, text, message):
    path = tmp_path / "x.csv"
    path.write_text(text)
    with pytest.raises(BufferFileError, match=message):
        read_buffers_csv(path)


def test_csv_missing_file(tmp_path):
    with pytest.raises(BufferFileError, match="no such file"):
        read_buffers_csv(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- CLI

def _write(tmp_path, buffers):
    path = tmp_path / "buffers.csv"
    path.write_text("id,lower,upper,size\n" + "".join(f"{b.id},{b.lower},{b.upper},{b.size}\n" for b in buffers))
    return path


def test_cli_writes_offsets_and_exits_zero(tmp_path, capsys):
    buffers = tiling(16, height=1024, horizon=12, seed=5)
    src, out = _write(tmp_path, buffers), tmp_path / "offsets.csv"
    assert run_cli([str(src), "--time-limit", "5", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "height reached" in printed and "lower bound" in printed and "gap" in printed
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    validate(buffers, {r[0]: int(r[4]) for r in rows})
    assert run_cli([str(src), "--capacity", "1KiB", "--time-limit", "5", "-o", str(out)]) == 0


def test_cli_capacity_too_small_exits_nonzero_with_best_height(tmp_path):
    buffers = [Buffer("a", 0, 2, 600), Buffer("b", 1, 3, 600)]
    src, out = _write(tmp_path, buffers), tmp_path / "offsets.csv"
    assert run_cli([str(src), "--capacity", "1000", "-o", str(out)]) == 1
    assert not out.exists()
    parser = argparse.ArgumentParser()
    add_alloc_parser(parser.add_subparsers())
    args = parser.parse_args(["alloc", str(src), "--capacity", "1000", "--time-limit", "1"])
    with pytest.raises(AllocationCapacityError, match=r"capacity 1000 .*best height 1200.*proven impossible"):
        args.func(args)


def test_cli_bad_input_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,lower,upper,size\na,0,1,x\n")
    assert run_cli([str(bad)]) == 1
    assert run_cli([str(tmp_path / "missing.csv")]) == 1
    good = _write(tmp_path, [Buffer("a", 0, 1, 4)])
    assert run_cli([str(good), "--capacity", "lots"]) == 1
    assert run_cli([str(good), "--alignment", "0"]) == 1
