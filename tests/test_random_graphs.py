"""Property tests: random graphs through print/parse, verify, the pipeline and the backend."""
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import memplan
from memplan.ir import Graph, TensorType
from memplan.ir.graph import Node, map_values
from memplan.ir.ops import infer_types, lookup
from memplan.ir.parser import parse
from memplan.ir.printer import print_graph
from memplan.ir.verify import verify
from memplan.analysis.liveness import liveness

UNARY = ["aten.relu.default", "aten.neg.default", "aten.tanh.default", "aten.sigmoid.default"]
BINARY = ["aten.add.Tensor", "aten.mul.Tensor", "aten.sub.Tensor", "aten.maximum.default"]


@st.composite
def random_graphs(draw):
    """A DAG over f32 vectors: unary, binary, views, cat and reductions, several outputs."""
    g = Graph("rand")
    width = draw(st.sampled_from([4, 8, 16]))
    values = [g.add_input(f"x{i}", TensorType("f32", (width,))) for i in range(draw(st.integers(1, 3)))]
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["unary", "binary", "view", "cat", "sum"]))
        same = [v for v in values if v.type.shape == (width,)]
        a = draw(st.sampled_from(same))
        if kind == "unary":
            op, args = draw(st.sampled_from(UNARY)), (a,)
        elif kind == "binary":
            op, args = draw(st.sampled_from(BINARY)), (a, draw(st.sampled_from(same)))
        elif kind == "view":
            op, args = "aten.view.default", (a, [2, width // 2])
        elif kind == "cat":
            parts = [p for p in values if p.type.rank == 2]
            if not parts:
                continue
            b = draw(st.sampled_from(parts))
            (flat,) = g.add_node("aten.view.default", (b, [width]), {}, [TensorType("f32", (width,))])
            op, args = "aten.add.Tensor", (a, flat)
        else:
            op, args = "aten.sum.dim_IntList", (a, [0], True)
        (out,) = g.add_node(op, args, {}, infer_types(Node("probe", op, args, {}, ())))
        if out.type.shape == (1,):
            (out,) = g.add_node("aten.expand.default", (out, [width]), {}, [TensorType("f32", (width,))])
        values.append(out)
    produced = [v for v in values if v.kind == "node"] or values[:1]
    g.outputs = draw(st.lists(st.sampled_from(produced), min_size=1, max_size=3, unique_by=lambda v: v.name))
    return g


def reference_run(g: Graph, inputs):
    """Interpret the graph node by node with the registry's reference implementations."""
    env = {v.name: t for v, t in zip(g.inputs, inputs)}
    for node in g.nodes:
        args = map_values(node.args, lambda v: env[v.name])
        result = lookup(node.op).impl(*args, **node.kwargs)
        results = [result] if isinstance(result, torch.Tensor) else list(result)
        env.update({v.name: r for v, r in zip(node.outputs, results)})
    return [env[v.name] for v in g.outputs]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs())
def test_random_graph_pipeline(g):
    verify(g)
    text = print_graph(g)
    assert parse(text) == g
    inputs = [torch.randn(v.type.shape) for v in g.inputs]
    expected = reference_run(g, inputs)
    cm = memplan.compile(g)
    got = cm(*inputs)
    got = list(got) if isinstance(got, tuple) else [got]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    live = liveness(cm.graph, cm.plan.schedule, temps=cm.plan.stats["scratch_bytes"])
    assert cm.plan.stats["peak_bytes"] == live.peak_bytes == max(live.live_bytes, default=0)
    assert all(b >= 0 for b in live.live_bytes)
    s = cm.plan.stats
    assert s["lower_bound_bytes"] <= s["peak_bytes"]
    joint = s["joint"]["candidates"]
    assert s["planned_peak_bytes"] <= joint[s["joint"]["chosen"]]["planned"] <= joint["baseline"]["planned"]
    assert s["arena_lower_bound_bytes"] <= s["arena_bytes"] <= s["planned_peak_bytes"]

