"""Tests for memplan.zoo (model builders) and benchmarks/measure.py (memory and
time measurement helpers)."""

from __future__ import annotations

import pytest
import torch

from memplan import zoo
from tests.bench_modules import load

MiB = 2**20
measure = load("measure")

TRANSFORMERS = ["gpt2", "bert", "llama"]
# Small sizes keep the per-family tests well under a second each.
SMALL = {
    "mlp": {},
    "gpt2": {"n_layer": 1, "seq": 32},
    "bert": {"n_layer": 1, "seq": 32},
    "llama": {"n_layer": 1, "seq": 32, "vocab": 1000},
    "resnet50": {"image": 64},
    "unet": {"image": 32},
}


def _sdpa_kept_table():
    """Default decompositions minus the SDPA entries (see MEASURING.md)."""
    table = torch.export.default_decompositions()
    for name in ("scaled_dot_product_attention", "_scaled_dot_product_attention_math",
                 "_scaled_dot_product_flash_attention_for_cpu"):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            table.pop(op.default, None)
    return table


def test_families_registry():
    assert set(SMALL) == set(zoo.FAMILIES)
    for builder in zoo.FAMILIES.values():
        assert builder.__doc__


def test_build_unknown_family():
    with pytest.raises(KeyError, match="unknown model family"):
        zoo.build("no-such-model")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_family_builds_and_runs(name):
    model, inputs = zoo.build(name, **SMALL[name])
    assert isinstance(model, torch.nn.Module) and not model.training
    assert isinstance(inputs, tuple) and all(isinstance(t, torch.Tensor) for t in inputs)
    with torch.no_grad():
        out = model(*inputs)
    assert isinstance(out, torch.Tensor)
    assert out.shape[0] == inputs[0].shape[0]
    assert torch.isfinite(out).all()
    # Not ~0 (the MobileNetV2 1e-21 trap) and not exploding.
    assert 1e-2 < out.abs().mean().item() < 1e2


@pytest.mark.parametrize("name", sorted(SMALL))
def test_family_is_deterministic(name):
    m1, x1 = zoo.build(name, **SMALL[name])
    m2, x2 = zoo.build(name, **SMALL[name])
    assert all(torch.equal(a, b) for a, b in zip(x1, x2))
    with torch.no_grad():
        assert torch.equal(m1(*x1), m2(*x2))


def test_build_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    zoo.build("mlp")
    assert torch.equal(torch.rand(4), expected)


def test_default_sizes():
    model, (ids,) = zoo.gpt2()
    assert ids.shape == (1, 128)
    assert zoo.param_bytes(model) / MiB == pytest.approx(56.1, abs=0.05)
    model, (img,) = zoo.unet()
    assert img.shape == (1, 3, 64, 64)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_family_exports_and_decomposes(name):
    model, inputs = zoo.build(name, **SMALL[name])
    ep = torch.export.export(model, inputs).run_decompositions(_sdpa_kept_table())
    targets = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    outputs = [n for n in ep.graph.nodes if n.op == "output"][0].args[0]
    assert len(outputs) == 1
    if name in TRANSFORMERS:
        assert torch.ops.aten.scaled_dot_product_attention.default in targets
        assert torch.ops.aten._softmax.default not in targets
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(*inputs), model(*inputs), rtol=1e-4, atol=1e-4)


def test_unet_pads_odd_sizes_and_uses_all_ops():
    model, inputs = zoo.unet(image=36)  # 36 -> 18 -> 9 -> 4: needs padding on the way up
    with torch.no_grad():
        assert model(*inputs).shape == (1, 2, 36, 36)
    ep = torch.export.export(model, inputs).run_decompositions(_sdpa_kept_table())
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    for op in ("convolution", "batch_norm", "relu", "max_pool2d", "upsample_bilinear2d",
               "cat", "constant_pad_nd"):
        assert any(op in t for t in targets), op


# --- benchmarks/measure.py -------------------------------------------------


def test_timeline_peak_counts_allocation():
    n = 4 * MiB

    def allocate():
        t = torch.empty(n, dtype=torch.uint8)
        t.fill_(1)
        return int(t[0])

    stats = measure.timeline_peak(allocate)
    assert stats["result"] == 1
    assert stats["peak"] >= n
    assert stats["baseline"] == 0
    assert n <= stats["activation_peak"] < n + MiB


def test_timeline_peak_baseline_is_touched_preexisting_tensors():
    a = torch.randn(256, 1024)  # 1 MiB, read by the call
    untouched = torch.randn(512, 1024)  # 2 MiB, never used: not counted

    def double(x):
        return x * 2  # 1 MiB output

    stats = measure.timeline_peak(double, a)
    assert stats["baseline"] == a.numel() * 4
    # The output plus a few bytes of scalar temporaries (the wrapped 2).
    assert 2 * a.numel() * 4 <= stats["peak"] < 2 * a.numel() * 4 + 1024
    assert a.numel() * 4 <= stats["activation_peak"] < a.numel() * 4 + 1024
    assert stats["peak"] < a.numel() * 4 + untouched.numel() * 4


def test_timeline_peak_sees_temporaries_freed_inside():
    def transient():
        big = torch.ones(2 * MiB, dtype=torch.uint8)  # freed before returning
        return big.sum()

    assert measure.timeline_peak(transient)["activation_peak"] >= 2 * MiB


def test_eager_activation_peak_matches_memtracker():
    from torch.distributed._tools.mem_tracker import MemTracker

    model, inputs = zoo.gpt2(n_layer=1, seq=64)
    with torch.no_grad():
        model(*inputs)  # warm up
    stats = measure.timeline_peak(_no_grad, model, inputs)
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker, torch.no_grad():
        model(*inputs)
    mt_peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    # Equal up to a few bytes of scalar temporaries that MemTracker misses.
    assert abs(stats["peak"] - mt_peak) < 1024
    # baseline = parameters + input ids; the activation peak is what remains.
    assert stats["baseline"] == zoo.param_bytes(model) + inputs[0].numel() * 8
    assert measure.eager_activation_peak(model, inputs) == stats["activation_peak"] > 0


def _no_grad(model, inputs):
    with torch.no_grad():
        return model(*inputs)


def test_median_time_interleaves():
    calls = []
    result = measure.median_time({"a": lambda: calls.append("a"),
                                  "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(result) == {"a", "b"} and all(v >= 0 for v in result.values())


@pytest.mark.slow
def test_measure_main_table(capsys):
    measure.main(["mlp", "resnet50"])
    out = capsys.readouterr().out
    assert "resnet50" in out and "89.88" in out
