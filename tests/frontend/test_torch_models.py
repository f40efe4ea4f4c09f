"""Real model families through the torch path: numerics vs eager, memory vs eager."""
import importlib.util
from pathlib import Path

import pytest
import torch

import memplan
from memplan import zoo

_spec = importlib.util.spec_from_file_location(
    "measure", Path(__file__).resolve().parents[2] / "benchmarks" / "measure.py")
measure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(measure)

FAST = [("mlp", {}), ("gpt2", {}), ("bert", {}), ("llama", {}), ("unet", {})]
SLOW = [("gpt2", {"n_layer": 12}), ("resnet50", {}), ("unet", {"image": 36})]


def _check(name, kwargs):
    model, inputs = zoo.build(name, **kwargs)
    cm = memplan.compile(model, inputs)
    with torch.no_grad():
        expected = model(*inputs)
    torch.testing.assert_close(cm(*inputs), expected, rtol=1e-4, atol=1e-4)
    return model, inputs, cm


@pytest.mark.parametrize("name,kwargs", FAST, ids=[f[0] for f in FAST])
def test_family_matches_eager(name, kwargs):
    _, _, cm = _check(name, kwargs)
    if name in ("gpt2", "bert", "llama"):
        ops = {n.op for n in cm.graph.nodes}
        assert "aten.scaled_dot_product_attention.default" in ops, "fused attention is kept whole"
        assert not any("softmax" in op for op in ops), "no materialised score matrix"


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs", SLOW, ids=["gpt2-12L", "resnet50", "unet-odd"])
def test_big_family_matches_eager(name, kwargs):
    _check(name, kwargs)


@pytest.mark.parametrize("name", ["gpt2", "unet"])
def test_emitted_code_needs_no_more_memory_than_eager(name):
    """Bytes, measured by the profiler memory timeline: the emitted code allocates exactly the
    planned peak (arena + outputs + measured kernel scratch), and no more than eager."""
    model, inputs, cm = _check(name, {})
    eager = measure.eager_activation_peak(model, inputs)
    emitted = measure.timeline_peak(cm, *inputs)["activation_peak"]
    assert emitted == cm.plan.stats["planned_peak_bytes"]
    assert emitted <= eager
