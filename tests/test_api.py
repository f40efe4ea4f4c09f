"""compile(): inputs it accepts, targets and budgets, and the errors users get."""
import json

import pytest
import torch

import memplan
from memplan.errors import (BudgetFormatError, BudgetInfeasibleError, InputMismatchError, TargetError,
                            UnsupportedOpError)
from memplan.target import load_target
from memplan.units import parse_bytes


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()


def test_module_exported_program_and_graphmodule_all_compile():
    model, x = _mlp(), torch.randn(5, 8)
    expected = model(x)
    ep = torch.export.export(model, (x,))
    gm = torch.fx.symbolic_trace(model)
    for source in (model, ep, gm):
        cm = memplan.compile(source, (x,))
        torch.testing.assert_close(cm(x), expected)
        assert cm.ir.startswith("graph ")
        assert "def run(weights" in cm.source


def test_summary_reports_peak_and_pass_times():
    cm = memplan.compile(_mlp(), (torch.randn(5, 8),))
    text = cm.plan.summary()
    assert "planned peak" in text and "schedule" in text and "verify" in text
    s = cm.plan.stats
    # relu writes in place over the 5x32 f32 addmm output: the arena holds that one buffer
    assert s["arena_bytes"] == s["arena_lower_bound_bytes"] == 5 * 32 * 4
    assert s["planned_peak_bytes"] == s["arena_bytes"] + s["outside_arena_bytes"]
    assert s["planned_peak_bytes"] >= s["peak_bytes"] >= s["lower_bound_bytes"]
    assert {solve["pass"] for solve in s["solves"]} == {"schedule", "allocate"}
    assert json.loads(cm.plan.to_json())["schedule"] == cm.plan.schedule


@pytest.mark.parametrize("text,expected", [("2GiB", 2 * 2**30), ("512KiB", 512 * 1024), ("1.5MB", 1_500_000),
                                           (4096, 4096), ("100", 100), (" 3 mib ", 3 * 2**20)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["2 parsecs", "GiB", "-5", -1, "1e9X", None, [1]])
def test_malformed_budget_is_a_typed_error(bad):
    with pytest.raises(BudgetFormatError, match="memory budget"):
        memplan.compile(_mlp(), (torch.randn(5, 8),), memory_budget=bad) if bad is not None else parse_bytes(bad)


def test_budget_is_a_hard_bound():
    model, x = _mlp(), torch.randn(5, 8)
    with pytest.raises(BudgetInfeasibleError) as info:
        memplan.compile(model, (x,), memory_budget=100)
    err = info.value
    planned = memplan.compile(model, (x,)).plan.stats["planned_peak_bytes"]
    assert err.best_peak >= 5 * 32 * 4 and err.budget == 100 and err.lower_bound > 100
    assert err.live_at_peak and all(size > 0 for _, size, _ in err.live_at_peak)
    assert "no plan fits the memory budget of 100 B" in str(err) and "%addmm" in str(err)
    cm = memplan.compile(model, (x,), memory_budget=planned)  # exactly enough is fine
    assert cm.plan.stats["planned_peak_bytes"] <= planned


def test_targets_presets_and_files(tmp_path):
    assert {"cpu", "h100", "a100", "rtx4090", "mcu"} <= set(memplan.PRESETS)
    assert load_target("mcu").tiers[0].capacity == 512 * 1024
    spec = tmp_path / "npu.yaml"
    spec.write_text("name: npu\ntiers:\n  - {name: sram, capacity: 2MiB, bandwidth: 200GB}\n"
                    "  - {name: dram, capacity: 4GiB, bandwidth: 25GB}\nflops: {float32: 1.0e12}\n")
    t = load_target(str(spec))
    assert t.name == "npu" and t.main_tier.capacity == 4 * 2**30 and t.tiers[0].bandwidth == 200e9
    js = tmp_path / "npu.json"
    js.write_text(json.dumps(t.to_dict()))
    assert load_target(str(js)) == t
    cm = memplan.compile(_mlp(), (torch.randn(5, 8),), target=str(spec))
    assert cm.plan.target == "npu"


@pytest.mark.parametrize("target,message", [
    ("h200x", "unknown target 'h200x'; presets: a100, cpu, h100, mcu, rtx4090"),
    ("missing.yaml", "does not exist"),
])
def test_bad_targets(target, message):
    with pytest.raises(TargetError, match=message):
        memplan.compile(_mlp(), (torch.randn(5, 8),), target=target)


def test_bad_target_file_fields(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntiers:\n  - {name: sram, capacity: lots, bandwidth: 1GB}\n")
    with pytest.raises(TargetError, match="bad.yaml.*sram capacity.*'lots'"):
        load_target(str(bad))
    bad.write_text("name: x\ntiers:\n  - {name: sram}\n")
    with pytest.raises(TargetError, match="missing field 'capacity'"):
        load_target(str(bad))
    bad.write_text("tiers: [unclosed\n")
    with pytest.raises(TargetError, match="not valid YAML"):
        load_target(str(bad))


def test_wrong_example_and_runtime_inputs():
    model = _mlp()
    with pytest.raises(InputMismatchError, match=r"could not capture Sequential .*float32 \(5, 9\)"):
        memplan.compile(model, (torch.randn(5, 9),))
    with pytest.raises(InputMismatchError, match="needs example_inputs"):
        memplan.compile(model)
    cm = memplan.compile(model, (torch.randn(5, 8),))
    with pytest.raises(InputMismatchError, match=r"input %input: expected f32\[5, 8\], got f32\[5, 9\]"):
        cm(torch.randn(5, 9))
    with pytest.raises(InputMismatchError, match=r"expected f32\[5, 8\], got i64\[5, 8\]"):
        cm(torch.ones(5, 8, dtype=torch.long))
    with pytest.raises(InputMismatchError, match="takes 1 inputs"):
        cm(torch.randn(5, 8), torch.randn(5, 8))


def test_unsupported_aten_op_names_op_and_module():
    class Nonzero(torch.nn.Module):
        def forward(self, x):
            return torch.nonzero(x)

    with pytest.raises((UnsupportedOpError, InputMismatchError), match="nonzero"):
        memplan.compile(Nonzero(), (torch.randn(4, 4),))


def test_dump_ir_after_every_pass(tmp_path):
    from memplan.ir.parser import parse as parse_text
    memplan.compile(_mlp(), (torch.randn(5, 8),), dump_ir_after="all", dump_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files[:4] == ["00-verify.mir", "01-fold_batchnorm.mir", "02-legalize.mir", "03-canonicalize.mir"]
    assert "09-schedule.plan.json" not in files, "a plan report exists once the graph is planned"
    assert "10-allocate.plan.json" in files and "11-verify_plan.plan.json" in files
    planned = parse_text((tmp_path / "10-allocate.mir").read_text())
    assert planned.storages or any(v.alloc is not None for v in planned.values())
    assert (tmp_path / "03-canonicalize.mir").read_text().startswith("# memplan IR after pass 'canonicalize'")
    from memplan.ir.parser import parse
    parse((tmp_path / "09-schedule.mir").read_text())


def test_an_input_laid_out_other_than_row_major_is_counted_in_the_plan():
    """A channels-last or transposed example input is copied to row-major when the module runs: the
    copy lives for the whole run, and the plan counts it (measured peak = planned peak)."""
    from memplan.profiling import timeline_peak
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(2, 4, 16, 16).to(memory_format=torch.channels_last)
    cm = memplan.compile(model, (x,))
    assert cm.graph.attrs["input_copies"] == x.numel() * 4
    assert timeline_peak(cm, x)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-4)
    xt = torch.randn(32, 16).t()
    cm = memplan.compile(torch.nn.Linear(32, 4).eval(), (xt,))
    assert timeline_peak(cm, xt)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]
