"""Static allocation at scale and on hostile input: time limit, near-linear memory, one-line errors."""
from __future__ import annotations

import argparse
import random
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memplan.solvers.alloc_cli as alloc_cli
import memplan.solvers.allocation as allocation
from memplan.errors import MemplanError, OutputPathError
from memplan.solvers.alloc_cpsat import cpsat_packing
from memplan.solvers.alloc_csv import BufferFileError, read_buffers_csv
from memplan.solvers.alloc_greedy import greedy_portfolio, sweep_packing
from memplan.solvers.alloc_instance import (PackingInstance, SortedKeys, conflict_count, conflict_lists,
                                            conflict_weights, range_max)
from memplan.solvers.allocation import Buffer, solve_allocation, validate


def dense(n: int, seed: int = 0) -> list[Buffer]:
    """Every buffer live at once (a clique of n): n**2 / 2 conflicting pairs."""
    rng = random.Random(seed)
    return [Buffer(f"b{i}", rng.randint(0, 100), rng.randint(1000, 1100),
                   rng.choice([64, 256, 1024]) * rng.randint(1, 8)) for i in range(n)]


def overlapping(n: int, seed: int = 0) -> list[Buffer]:
    """Long random lifetimes: a dense conflict graph that is not one clique."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lo = rng.randint(0, 1000)
        out.append(Buffer(f"b{i}", lo, lo + rng.randint(100, 600), rng.choice([64, 256, 1024]) * rng.randint(1, 8)))
    return out


def write_csv(path, buffers):
    path.write_text("id,lower,upper,size\n" + "".join(f"{b.id},{b.lower},{b.upper},{b.size}\n" for b in buffers))
    return path


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="memplan")
    alloc_cli.add_alloc_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["alloc", *argv])
    return args.func(args)


# ----------------------------------------------------------------------------- scale

@pytest.mark.parametrize("make", [dense, overlapping])
def test_ten_thousand_dense_buffers_keep_the_time_limit_and_linear_memory(make):
    buffers = make(10_000)
    tracemalloc.start()
    try:
        start = time.monotonic()
        result = solve_allocation(buffers, time_limit=1.0)
        validate(buffers, result.offsets)
        wall = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # before: 50M conflict pairs listed (1.3 GB) and minutes of work; a generous bound, not a benchmark
    assert peak < 150 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert wall < 20, f"{wall:.1f} s for a 1 s limit"
    assert result.height >= result.lower_bound == allocation.interval_lower_bound(buffers)
    if make is dense:
        assert result.status == "optimal"        # a clique: stacking is optimal, the sweep finds it


def test_greedy_portfolio_falls_back_to_the_sweep_without_conflict_lists():
    buffers = overlapping(300)
    inst = PackingInstance([b.lower for b in buffers], [b.upper for b in buffers], [b.size for b in buffers])
    assert not inst.build_conflicts(max_edges=10)
    result = greedy_portfolio(PackingInstance(inst.lowers, inst.uppers, inst.sizes, 1, _edges=10**9))
    assert result.variant == "sweep/best-fit"
    validate(buffers, result.offsets)
    with pytest.raises(ValueError, match="above the limit"):
        PackingInstance(inst.lowers, inst.uppers, inst.sizes, 1, _edges=10**9).neighbours


def test_exact_phase_skips_components_too_large_for_it(monkeypatch):
    monkeypatch.setattr(allocation, "MAX_EXACT_BUFFERS", 50)
    buffers = overlapping(200, seed=3)
    result = solve_allocation(buffers, time_limit=2.0)
    validate(buffers, result.offsets)
    assert any("exact phase skips a component of 200 buffers" in line for line in result.log)


def test_a_deadline_in_the_past_still_returns_a_valid_packing():
    buffers = overlapping(2000, seed=4)
    inst = PackingInstance([b.lower for b in buffers], [b.upper for b in buffers], [b.size for b in buffers])
    result = greedy_portfolio(inst, time_budget=0.0, deadline=time.monotonic() - 1)
    validate(buffers, result.offsets)


# ----------------------------------------------------------------------------- the O(n log n) pieces

@st.composite
def instances(draw, max_n: int = 14):
    n = draw(st.integers(0, max_n))
    lowers = [draw(st.integers(0, 10)) for _ in range(n)]
    uppers = [lo + draw(st.integers(1, 6)) for lo in lowers]
    sizes = [draw(st.sampled_from([0, 1, 3, 8, 13])) for _ in range(n)]
    return PackingInstance(lowers, uppers, sizes, draw(st.sampled_from([1, 1, 4])))


def brute_valid(inst: PackingInstance, offsets: list[int]) -> bool:
    for i in range(len(inst)):
        for j in range(i):
            if (inst.sizes[i] and inst.sizes[j] and inst.lowers[i] < inst.uppers[j] and inst.lowers[j] < inst.uppers[i]
                    and offsets[i] < offsets[j] + inst.sizes[j] and offsets[j] < offsets[i] + inst.sizes[i]):
                return False
    return True


@settings(max_examples=300, deadline=None)
@given(instances())
def test_sweep_packing_is_valid_and_aligned(inst):
    offsets = sweep_packing(inst)
    assert brute_valid(inst, offsets) and all(o % inst.alignment == 0 for o in offsets)
    assert inst.height(offsets) >= inst.lower_bound()


@settings(max_examples=300, deadline=None)
@given(instances(), st.data())
def test_validate_agrees_with_the_pairwise_check(inst, data):
    buffers = [Buffer(str(i), lo, hi, s) for i, (lo, hi, s) in enumerate(zip(inst.lowers, inst.uppers, inst.sizes))]
    offsets = [data.draw(st.integers(0, 20)) for _ in buffers]
    try:
        validate(buffers, offsets)
        ok = True
    except ValueError:
        ok = False
    assert ok == brute_valid(inst, offsets)


@settings(max_examples=300, deadline=None)
@given(instances(max_n=25))
def test_counts_and_weights_match_the_conflict_lists(inst):
    lists = conflict_lists(inst.lowers, inst.uppers, inst.sizes)
    assert conflict_count(inst.lowers, inst.uppers, inst.sizes) == sum(map(len, lists)) // 2
    assert conflict_weights(inst.lowers, inst.uppers, inst.sizes) == [sum(inst.sizes[j] for j in x) for x in lists]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-50, 50), max_size=40), st.data())
def test_range_max_and_sorted_keys(values, data):
    queries = [(a, data.draw(st.integers(a, len(values)))) for a in data.draw(st.lists(st.integers(0, len(values))))]
    assert range_max(values, [a for a, _ in queries], [b for _, b in queries]) == \
        [max(values[a:b], default=0) for a, b in queries]
    keys, reference = SortedKeys(), []
    SortedKeys.LOAD, load = 2, SortedKeys.LOAD
    try:
        for v in values:
            if v in reference:
                keys.remove(v)
                reference.remove(v)
            else:
                keys.add(v)
                reference = sorted(reference + [v])
            probe = data.draw(st.integers(-60, 60))
            assert keys.first_at_least(probe) == next((r for r in reference if r >= probe), None)
            assert keys.last_below(probe) == next((r for r in reversed(reference) if r < probe), None)
    finally:
        SortedKeys.LOAD = load


# ----------------------------------------------------------------------------- CSV and CLI

@pytest.mark.parametrize("row,match", [
    ("a,0,1,4611686018427387904", r"x\.csv:2: field 'size' \(4611686018427387904\) is out of range"),
    ("a,0,4611686018427387904,8", r"x\.csv:2: field 'upper' .* is out of range"),
    ("a,0,1," + "9" * 5000, r"x\.csv:2: field 'size' is '9999.*\.\.\., not an integer below 2\*\*62"),
    ("a,0,1," + "9" * 200_000, r"x\.csv:\d+: not valid CSV \(field larger than field limit"),
    ("a" * 2000 + ",0,1,8", "is longer than 1024 characters"),
])
def test_csv_values_are_bounded(tmp_path, row, match):
    path = tmp_path / "x.csv"
    path.write_text("id,lower,upper,size\n" + row + "\n")
    with pytest.raises(BufferFileError, match=match) as info:
        read_buffers_csv(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_csv_that_is_not_utf8(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"id,lower,upper,size\n\xff,0,1,8\n")
    with pytest.raises(BufferFileError, match="not a UTF-8 text file"):
        read_buffers_csv(path)


def test_sizes_near_the_limit_are_packed_not_crashed(tmp_path):
    big = 2**62 - 1
    buffers = [Buffer("a", 0, 3, big), Buffer("b", 0, 4, big), Buffer("c", 3, 4, big), Buffer("d", 0, 1, big // 3),
               Buffer("e", 2, 4, big // 2)]
    for method in ("auto", "cpsat"):
        result = solve_allocation(buffers, time_limit=1.0, method=method)
        validate(buffers, result.offsets)
    src = write_csv(tmp_path / "big.csv", buffers)
    assert run_cli([str(src), "--method", "cpsat", "--time-limit", "1"]) == 0


def test_cpsat_beyond_int64_says_why_in_one_line():
    inst = PackingInstance([0, 1], [2, 3], [2**62, 2**62])
    run = cpsat_packing(inst, None, 2**63, 2**63 + 5, 1.0)
    assert run.status == "unknown" and "int64" in run.note and "\n" not in run.note


def test_output_folder_fails_before_solving(tmp_path, monkeypatch):
    src = write_csv(tmp_path / "in.csv", [Buffer("a", 0, 1, 4)])

    def no_solve(*args, **kwargs):
        raise AssertionError("solved before checking -o")

    monkeypatch.setattr(alloc_cli, "solve_allocation", no_solve)
    with pytest.raises(OutputPathError, match="is a folder") as info:
        run_cli([str(src), "-o", str(tmp_path)])
    assert "\n" not in str(info.value)
    with pytest.raises(OutputPathError, match="does not exist"):
        run_cli([str(src), "-o", str(tmp_path / "missing" / "out.csv")])


@pytest.mark.parametrize("flags,match", [
    (["--time-limit", "nan"], "finite positive"),
    (["--time-limit", "inf"], "finite positive"),
    (["--alignment", str(2**40)], "--alignment must be in"),
    (["--capacity", "1" + "0" * 400], "2\\*\\*62"),
])
def test_bad_cli_arguments_are_one_line_errors(tmp_path, flags, match):
    src = write_csv(tmp_path / "in.csv", [Buffer("a", 0, 1, 4)])
    with pytest.raises(MemplanError, match=match) as info:
        run_cli([str(src), *flags])
    assert "\n" not in str(info.value)


def test_buffers_reject_values_beyond_the_limit():
    with pytest.raises(ValueError, match="out of range"):
        Buffer("a", 0, 1, 2**62)
    with pytest.raises(ValueError, match="must be below 2\\*\\*62"):
        Buffer("a", -(2**62), 1, 1)


@pytest.mark.parametrize("text", ["1_000", "\u0661\u0662", " 1 2", "0x10"])
def test_csv_numbers_are_plain_ascii_integers(text):
    import io
    from memplan.solvers.alloc_csv import BufferFileError, parse_buffers_csv
    with pytest.raises(BufferFileError, match="not an integer"):
        parse_buffers_csv(io.StringIO(f"id,lower,upper,size\nx,0,2,{text}\n"))
