"""memplan remat: rematerialisation schedules under a budget (solvers/remat*.py)."""
import json
import math
import random
import subprocess
import sys

import pytest

from memplan.solvers.remat import solve_remat
from memplan.solvers.remat_problem import (InvalidSchedule, RematInputError, evaluate, problem_from_node_link,
                                           read_graph_json)


def reference_peak(problem, schedule):
    """Moccasin's get_mem_from_schedule, transcribed: at step j, the computations with a reader at
    or after j, and the one at j."""
    reads = []
    for j, v in enumerate(schedule):
        mine = []
        for u in problem.preds[v]:
            i = max(i for i in range(j) if schedule[i] == u)
            mine.append(i)
        reads.append(mine)
    peak = 0
    for j in range(len(schedule)):
        live = {j} | {i for k in range(j, len(schedule)) for i in reads[k] if i < j}
        peak = max(peak, sum(problem.ram[schedule[i]] for i in live))
    return peak, sum(problem.cost[v] for v in schedule)


def training_graph(layers, seed=0):
    """Checkmate's linear training graph: forward f0..f(L-1), loss, backward b(L-1)..b0, each b_i
    reading f_i (its saved activation) and the gradient after it."""
    rng = random.Random(seed)
    nodes, links = [], []
    for i in range(layers):
        nodes.append({"id": f"f{i}", "cost_cpu": rng.randint(1, 9), "cost_ram": rng.randint(1, 9) * 100})
        if i:
            links.append({"source": f"f{i - 1}", "target": f"f{i}"})
    nodes.append({"id": "loss", "cost_cpu": 1, "cost_ram": 10})
    links.append({"source": f"f{layers - 1}", "target": "loss"})
    prev = "loss"
    for i in reversed(range(layers)):
        nodes.append({"id": f"b{i}", "cost_cpu": rng.randint(1, 9), "cost_ram": rng.randint(1, 9) * 100})
        links += [{"source": prev, "target": f"b{i}"}, {"source": f"f{i}", "target": f"b{i}"}]
        prev = f"b{i}"
    return {"directed": True, "graph": {"name": f"train{layers}"}, "nodes": nodes, "links": links}


def layered_graph(n, seed=0):
    """A random layered DAG (as in Moccasin's random graphs: edges to the next layers, some skipping)."""
    rng = random.Random(seed)
    layers, k = [], 0
    while k < n:
        w = min(n - k, rng.randint(1, 5))
        layers.append(list(range(k, k + w)))
        k += w
    nodes = [{"id": v, "cost_cpu": rng.randint(1, 1000), "cost_ram": rng.randint(1, 60) * 10} for v in range(n)]
    links = set()
    for a, layer in enumerate(layers[1:], 1):
        for v in layer:
            for u in rng.sample(layers[a - 1], min(len(layers[a - 1]), rng.randint(1, 2))):
                links.add((u, v))
            if a > 2 and rng.random() < 0.3:
                links.add((rng.choice(layers[rng.randrange(0, a - 1)]), v))
    return {"directed": True, "nodes": nodes, "links": [{"source": u, "target": v} for u, v in sorted(links)]}


def test_evaluation_matches_moccasins_definition():
    p = problem_from_node_link(layered_graph(40, seed=3))
    rng = random.Random(1)
    for _ in range(5):
        schedule = list(p.order)
        for _ in range(6):  # insert recomputations at random legal places
            v = rng.randrange(p.n)
            first = schedule.index(v)
            last_pred = max([schedule.index(u) for u in p.preds[v]], default=-1)
            schedule.insert(rng.randint(max(first, last_pred) + 1, len(schedule)), v)
        ev = evaluate(p, schedule)
        assert (ev.peak, ev.cost) == reference_peak(p, schedule)


def test_invalid_schedules_are_refused():
    p = problem_from_node_link(training_graph(3))
    with pytest.raises(InvalidSchedule, match="has not been computed"):
        evaluate(p, list(reversed(p.order)))
    with pytest.raises(InvalidSchedule, match="never computed"):
        evaluate(p, p.order[:-1])


@pytest.mark.parametrize("fraction", [0.9, 0.7, 0.5])
def test_training_graph_fits_by_recomputing(fraction):
    p = problem_from_node_link(training_graph(12, seed=2))
    topo = evaluate(p, p.order)
    budget = math.ceil(topo.peak * fraction)
    r = solve_remat(p, budget, time_limit=6)
    if budget < p.min_peak_bound():
        assert r.status == "INFEASIBLE"
        return
    assert r.fits, r
    ev = evaluate(p, r.schedule)
    assert ev.peak == r.peak <= budget and ev.cost == r.cost >= sum(p.cost)
    assert r.bound <= r.cost and 0 <= r.gap < 1


def test_keep_order_keeps_first_computations_in_order():
    p = problem_from_node_link(layered_graph(60, seed=5))
    topo = evaluate(p, p.order)
    r = solve_remat(p, math.ceil(0.85 * topo.peak), time_limit=5, keep_order=True)
    assert r.fits
    firsts = list(dict.fromkeys(r.schedule))
    assert firsts == list(p.order)
    assert evaluate(p, r.schedule).peak <= r.budget


def test_a_budget_below_any_step_is_infeasible_at_once():
    p = problem_from_node_link(training_graph(5))
    r = solve_remat(p, p.min_peak_bound() - 1, time_limit=5)
    assert r.status == "INFEASIBLE" and r.solve_s < 1


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "memplan.cli", "remat", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_cli_writes_the_schedule(tmp_path):
    g = tmp_path / "g.json"
    g.write_text(json.dumps(layered_graph(80, seed=7)))
    out = tmp_path / "out.json"
    r = run_cli(g, "--budget-fraction", "0.8", "--time-limit", "4", "-o", out)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert {"schedule", "cost", "peak", "status", "bound", "gap", "solve_s"} <= set(data)
    p = read_graph_json(g)
    index = {nid: k for k, nid in enumerate(p.ids)}
    ev = evaluate(p, [index[x] for x in data["schedule"]])
    assert ev.peak == data["peak"] <= data["budget"] == math.ceil(0.8 * evaluate(p, p.order).peak)
    assert ev.cost == data["cost"] and data["status"] in ("OPTIMAL", "FEASIBLE")


def test_cli_fails_with_the_smallest_peak_when_the_budget_cannot_be_met(tmp_path):
    g = tmp_path / "g.json"
    g.write_text(json.dumps(training_graph(4)))
    out = tmp_path / "out.json"
    r = run_cli(g, "--budget", "50", "--time-limit", "2", "-o", out)
    assert r.returncode != 0 and not out.exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no schedule can peak below" in lines[0]


@pytest.mark.parametrize("text,words", [
    ("not json", "not JSON"),
    ('{"nodes": 3}', "node-link"),
    ('{"nodes": [{"id": 1, "cost_cpu": 1}], "links": []}', "lacks"),
    ('{"nodes": [{"id": 1, "cost_cpu": -1, "cost_ram": 2}], "links": []}', "cost_cpu must be"),
    ('{"nodes": [{"id": 1, "cost_cpu": 1, "cost_ram": 2.5}], "links": []}', "whole number"),
    ('{"nodes": [{"id": 1, "cost_cpu": 1, "cost_ram": 2}], "links": [{"source": 1, "target": 9}]}', "not in 'nodes'"),
    ('{"nodes": [{"id": "a", "cost_cpu": 1, "cost_ram": 2}, {"id": "b", "cost_cpu": 1, "cost_ram": 2}], '
     '"links": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}]}', "cycle"),
    ('{"nodes": [{"id": 1, "cost_cpu": 1, "cost_ram": 2}, {"id": 1, "cost_cpu": 1, "cost_ram": 2}], "links": []}',
     "appears twice"),
    ('{"graph": {"order": [2, 1]}, "nodes": [{"id": 1, "cost_cpu": 1, "cost_ram": 2}, '
     '{"id": 2, "cost_cpu": 1, "cost_ram": 2}], "links": [{"source": 1, "target": 2}]}', "not a topological order"),
    ('{"nodes": [{"id": "__import__(\'os\').system(\'echo hi\')", "cost_cpu": "1e9", "cost_ram": 2}], "links": []}',
     "cost_cpu must be"),
    # a boolean endpoint is not node 1 (True == 1 in Python)
    ('{"nodes": [{"id": 1, "cost_cpu": 1, "cost_ram": 2}, {"id": 2, "cost_cpu": 1, "cost_ram": 2}], '
     '"links": [{"source": true, "target": 2}]}', "not in 'nodes'"),
    ('{"nodes": [{"id": 1, "cost_cpu": 1, "cost_ram": 4000000000000000000}, '
     '{"id": 2, "cost_cpu": 1, "cost_ram": 4000000000000000000}], "links": []}', "2**58"),
])
def test_bad_graphs_get_one_line(tmp_path, text, words):
    g = tmp_path / "bad.json"
    g.write_text(text)
    r = run_cli(g, "--budget", "100")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "bad.json" in lines[0], r.stderr


@pytest.mark.parametrize("args,words", [
    (["--budget-fraction", "0"], "--budget-fraction"),
    (["--budget", "-5"], "--budget"),
    (["--budget", "10", "--time-limit", "nan"], "--time-limit"),
    (["--budget", "10", "--copies", "0"], "--copies"),
    (["--budget", "10", "-o", ""], "empty path"),
])
def test_bad_arguments_get_one_line(tmp_path, args, words):
    g = tmp_path / "g.json"
    g.write_text(json.dumps(training_graph(3)))
    r = run_cli(g, *args)
    assert r.returncode != 0 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_output_folder_must_exist(tmp_path):
    g = tmp_path / "g.json"
    g.write_text(json.dumps(training_graph(3)))
    r = run_cli(g, "--budget", "100000", "-o", tmp_path / "nope" / "out.json")
    assert r.returncode != 0 and "does not exist" in r.stderr


def test_fractional_costs_are_exact_or_the_optimum_is_not_claimed():
    from memplan.solvers.remat_problem import scaled_costs
    assert scaled_costs([1, 2.5, 0.125]) == ([1000, 2500, 125], 1000, True)
    assert scaled_costs([3, 4]) == ([3, 4], 1, True)
    cost, scale, exact = scaled_costs([0.1234567890123456, 1.0])  # 16 decimals: rounded to 12
    assert scale == 10 ** 12 and not exact and cost[1] == 10 ** 12
    # a choice that rounding to six decimals would call a tie: 1e-7 apart
    g = training_graph(6)
    for k, node in enumerate(g["nodes"]):
        node["cost_cpu"] = node["cost_cpu"] + 0.5 + k * 1e-7
    problem = problem_from_node_link(g)
    assert problem.costs_exact and problem.cost_scale == 10 ** 7
    topo = evaluate(problem, problem.order)
    r = solve_remat(problem, int(topo.peak * 0.8), time_limit=10)
    assert r.fits
    want = sum(float(g["nodes"][v]["cost_cpu"]) for v in r.schedule)
    assert math.isclose(problem.file_cost(r.cost), want, rel_tol=1e-12)
    g["nodes"][0]["cost_cpu"] = 1 / 3  # 0.333...: 16 decimals, rounded
    rounded = problem_from_node_link(g)
    assert not rounded.costs_exact
    r = solve_remat(rounded, int(topo.peak * 0.8), time_limit=10)
    assert r.status == "FEASIBLE" and "rounded" in r.bound_scope


def test_copies_grow_when_too_few_make_the_budget_impossible(monkeypatch):
    import memplan.solvers.remat as remat
    problem = problem_from_node_link(training_graph(10, seed=3))
    topo = evaluate(problem, problem.order)
    budget = int(topo.peak * 0.6)  # within reach with two computations of a node, not with one
    monkeypatch.setattr(remat, "greedy", lambda p, b, deadline: (list(p.order), topo))  # a greedy that finds nothing
    r = solve_remat(problem, budget, time_limit=20, keep_order=True, copies=1)
    assert r.fits and r.peak <= budget and r.method == "cp-sat", (r.status, r.method)
    assert max(r.schedule.count(v) for v in set(r.schedule)) >= 2


def test_a_model_too_large_to_build_in_time_is_not_built(monkeypatch):
    import time as _time
    import memplan.solvers.remat as remat
    problem = problem_from_node_link(layered_graph(300, seed=2))
    topo = evaluate(problem, problem.order)
    monkeypatch.setattr(remat, "BUILD_S_PER_LITERAL", 1.0)  # as if each literal took a second
    t = _time.perf_counter()
    r = solve_remat(problem, int(topo.peak * 0.9), time_limit=3)
    assert _time.perf_counter() - t < 5 and "CP-SAT not run" in r.bound_scope
