"""Scheduling solver: liveness of an order, lower bound, heuristics, CP-SAT, decomposition."""
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memplan.solvers.sched_decompose import extract_subproblem, find_segments, improve_by_windows
from memplan.solvers.sched_heuristics import HEURISTICS
from memplan.solvers.scheduling import (INPUT, Buf, ScheduleProblem, best_heuristic, check_order, is_topological,
                                        live_profile, lower_bound, peak_of, solve_exact, solve_schedule)


# ----------------------------------------------------------------------------- instances

@st.composite
def problems(draw, max_nodes=10, extras=True):
    """Random DAGs with random buffers: multi-user, kept, unread, temps; inputs and base bytes."""
    n = draw(st.integers(1, max_nodes))
    preds = [[p for p in range(v) if draw(st.booleans()) and draw(st.booleans())] for v in range(n)]
    bufs = []
    for v in range(n):
        for _ in range(draw(st.integers(0, 2))):
            later = list(range(v + 1, n))
            users = draw(st.lists(st.sampled_from(later), max_size=3)) if later else []
            bufs.append(Buf(draw(st.integers(0, 40)), v, tuple(users), draw(st.booleans()) and not users))
    if extras and n > 1 and draw(st.booleans()):
        users = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=2))
        bufs.append(Buf(draw(st.integers(1, 40)), INPUT, tuple(users)))
    temp = [draw(st.sampled_from([0, 0, 5, 30])) for _ in range(n)]
    base = draw(st.sampled_from([0, 0, 7])) if extras else 0
    # shuffle labels so that the given order is not always 0..n-1 topological
    perm = draw(st.permutations(range(n)))
    relabel = {v: perm[v] for v in range(n)}
    new_preds = [[] for _ in range(n)]
    for v in range(n):
        new_preds[relabel[v]] = [relabel[p] for p in preds[v]]
    bufs = [Buf(b.size, relabel.get(b.producer, INPUT), tuple(relabel[u] for u in b.users), b.keep) for b in bufs]
    new_temp = [0] * n
    for v in range(n):
        new_temp[relabel[v]] = temp[v]
    return ScheduleProblem(n, new_preds, bufs, new_temp, base)


def all_orders(problem):
    """Every topological order (tiny problems only)."""
    def extend(order, done):
        if len(order) == problem.n:
            yield list(order)
            return
        for v in range(problem.n):
            if not done[v] and all(done[p] for p in problem.deps[v]):
                done[v] = True
                order.append(v)
                yield from extend(order, done)
                order.pop()
                done[v] = False
    yield from extend([], [False] * problem.n)


def brute_force_peak(problem):
    return min(peak_of(problem, order) for order in all_orders(problem))


def chain_of_blocks(blocks, heads=3):
    """Identical fan-out / fan-in blocks joined by residual adds (a transformer-like chain)."""
    preds, sizes, users = [], [], []

    def node(inputs, size):
        preds.append(list(inputs))
        sizes.append(size)
        users.append([])
        for u in inputs:
            users[u].append(len(preds) - 1)
        return len(preds) - 1

    x = node([], 8)
    for _ in range(blocks):
        h = node([x], 8)
        branches = [node([node([h], 4)], 30) for _ in range(heads)]      # big intermediate per branch
        outs = [node([b], 2) for b in branches]
        x = node([x, node(outs, 8)], 8)
    return ScheduleProblem(len(preds), preds, [Buf(sizes[v], v, tuple(users[v]), not users[v])
                                               for v in range(len(preds))])


# ----------------------------------------------------------------------------- liveness

def test_live_profile_matches_the_liveness_pass():
    """The chain of tests/passes/test_liveness.py: the view %v gives its reads to its base %a."""
    from memplan.ir.parser import parse
    from memplan.analysis.liveness import liveness
    text = """
graph chain(%x: f32[256]) {
  %a: f32[256] = aten.relu.default(%x)
  %b: f32[256] = aten.neg.default(%a)
  %v: f32[16, 16] = aten.view.default(%a, [16, 16])
  %c: f32[256] = aten.exp.default(%b)
  %d: f32[16, 16] = aten.sigmoid.default(%v)
  return %c, %d
}
"""
    live = liveness(parse(text))
    # nodes a b v c d; %v owns no bytes and its reader d reads %a
    p = ScheduleProblem(5, [[], [0], [0], [1], [2]],
                        [Buf(1024, 0, (1, 2, 4)), Buf(1024, 1, (3,)), Buf(1024, 3, keep=True),
                         Buf(1024, 4, keep=True)])
    assert live_profile(p, range(5)) == live.live_bytes == [1024, 2048, 2048, 3072, 3072]


def test_liveness_rules():
    # buffer 0 read by 2: live steps 0..2; buffer 1 unread: only at its step; kept: to the end;
    # input buffer: from the start to its last reader; temp only at its step; base everywhere
    p = ScheduleProblem(4, [[], [], [], []],
                        [Buf(1, 0, (2,)), Buf(10, 1), Buf(100, 2, keep=True), Buf(1000, INPUT, (1,))],
                        temp=[0, 0, 0, 5000], base_bytes=10000)
    assert live_profile(p, [0, 1, 2, 3]) == [11001, 11011, 10101, 15100]
    assert peak_of(p, [0, 1, 2, 3]) == 15100


def test_invalid_orders_are_rejected_by_name():
    p = ScheduleProblem(2, [[], [0]], [Buf(1, 0, (1,))], names=["mm", "relu"])
    assert not is_topological(p, [1, 0])
    with pytest.raises(ValueError, match="relu before its predecessor mm"):
        check_order(p, [1, 0])
    with pytest.raises(ValueError, match="permutation"):
        peak_of(p, [0, 0])
    with pytest.raises(ValueError, match="cycle"):
        ScheduleProblem(2, [[1], [0]], [])


# ----------------------------------------------------------------------------- known optima

def test_two_branches_with_big_temporaries_run_one_after_the_other():
    # given order interleaves the branches: a0 b0 a1 b1 join; each a0/b0 has a big temp and output
    p = ScheduleProblem(5, [[], [], [0], [1], [2, 3]],
                        [Buf(50, 0, (2,)), Buf(50, 1, (3,)), Buf(1, 2, (4,)), Buf(1, 3, (4,)), Buf(1, 4, keep=True)],
                        temp=[100, 100, 0, 0, 0])
    assert peak_of(p, range(5)) == 200
    for method in ("auto", "exact"):
        r = solve_schedule(p, time_limit=5, method=method)
        assert r.peak == 151 and r.status == "OPTIMAL" and r.lower_bound == 151
        assert r.order.index(2) < r.order.index(1) or r.order.index(3) < r.order.index(0), \
            "one branch finishes before the other starts"


def test_lower_bound_counts_buffers_crossing_a_node():
    # x (size 100) produced by 0 and read by 3; nodes 1 -> 2 lie between: x is live while they run
    p = ScheduleProblem(4, [[], [0], [1], [2]], [Buf(100, 0, (3,)), Buf(1, 1, (2,)), Buf(2, 2, (3,))])
    assert lower_bound(p) == 103 == brute_force_peak(p)


def test_repeated_blocks_are_solved_once_and_optimally():
    p = chain_of_blocks(12)
    r = solve_schedule(p, time_limit=10)
    check_order(p, r.order)
    assert r.exact_decomposition
    shapes = {s.shape for s in r.segments}
    assert len(shapes) < len(r.segments) / 3, "identical blocks share a shape"
    assert r.status == "OPTIMAL" and r.peak == r.lower_bound
    assert r.peak < r.baseline_peak or r.baseline_peak == r.lower_bound
    small = chain_of_blocks(1, heads=2)
    assert solve_schedule(small, time_limit=5).peak == brute_force_peak(small)


def test_floating_source_does_not_block_the_cuts():
    # a constant (node 1, no predecessors) read only by the last node: still a chain of cut vertices
    p = ScheduleProblem(6, [[], [], [0], [2], [3], [4, 1]],
                        [Buf(4, 0, (2,)), Buf(3, 1, (5,)), Buf(4, 2, (3,)), Buf(4, 3, (4,)), Buf(4, 4, (5,)),
                         Buf(1, 5, keep=True)])
    dec = find_segments(p)
    assert dec.exact and len(dec.segments) >= 4
    r = solve_schedule(p, time_limit=5)
    assert r.peak == brute_force_peak(p) and r.order.index(1) == 4


# ----------------------------------------------------------------------------- properties

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(problems())
def test_every_method_returns_a_valid_order_no_worse_than_the_baseline(p):
    baseline = peak_of(p, HEURISTICS["baseline"](p))
    bound = lower_bound(p)
    best = best_heuristic(p)
    for method in list(HEURISTICS) + ["heuristic", "exact", "auto"]:
        r = solve_schedule(p, time_limit=2, method=method)
        assert is_topological(p, r.order), method
        assert peak_of(p, r.order) == r.peak, method
        assert r.peak >= r.lower_bound >= bound, method
        assert r.baseline_peak == baseline
        if method in ("heuristic", "exact", "auto"):
            assert r.peak <= best.peak <= baseline, method
        assert 0.0 <= r.gap < 1.0 or r.peak == 0


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_nodes=7))
def test_optimal_against_brute_force(p):
    optimum = brute_force_peak(p)
    assert lower_bound(p) <= optimum
    for method in ("exact", "auto"):
        r = solve_schedule(p, time_limit=5, method=method)
        assert r.peak == optimum, method
        assert r.lower_bound <= optimum
        if r.status == "OPTIMAL":
            assert r.lower_bound == optimum


@SETTINGS
@given(problems(max_nodes=14), st.data())
def test_a_window_sub_problem_sees_the_same_bytes(p, data):
    order = best_heuristic(p).order
    a = data.draw(st.integers(0, p.n - 1))
    b = data.draw(st.integers(a + 1, p.n))
    rank = [0] * p.n
    for i, v in enumerate(order):
        rank[v] = i
    sub = extract_subproblem(p, order[a:b], rank, a, b - 1)
    assert live_profile(sub, range(b - a)) == live_profile(p, order)[a:b]
    res = solve_exact(sub, list(range(b - a)), time_limit=2)
    new = order[:a] + [order[a:b][i] for i in res.order] + order[b:]
    assert is_topological(p, new)
    assert max(live_profile(p, new)[a:b]) == res.peak


@SETTINGS
@given(problems(max_nodes=30, extras=False))
def test_window_search_keeps_orders_valid_and_never_worse(p):
    start = HEURISTICS["bfs"](p)
    order, stats = improve_by_windows(p, start, time_limit=2, window=6, max_window=10)
    assert is_topological(p, order)
    assert peak_of(p, order) <= peak_of(p, start)


@SETTINGS
@given(problems(max_nodes=16))
def test_decomposition_segments_partition_the_nodes_in_a_valid_sequence(p):
    for attach in (False, True):
        dec = find_segments(p, attach=attach)
        flat = [v for seg in dec.segments for v in seg]
        assert sorted(flat) == list(range(p.n))
        seg_of = {v: k for k, seg in enumerate(dec.segments) for v in seg}
        assert all(seg_of[q] <= seg_of[v] for v in range(p.n) for q in p.deps[v])
