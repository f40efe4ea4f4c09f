"""Target specs, budgets and plan files are untrusted: typed one-line errors, bounded work, no echo."""
import json
import time

import pytest
import torch

import memplan
from memplan.errors import BudgetFormatError, PlanFormatError, TargetError
from memplan.plan import Plan
from memplan.target import PRESETS, load_target
from memplan.units import MAX_BYTES, parse_bytes


def one_line(error: Exception, limit: int = 400) -> str:
    message = str(error)
    assert "\n" not in message and len(message) < limit, message[:1000]
    return message


# ----------------------------------------------------------------------------- targets

BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")]
    + ["name: *i", "tiers: [{name: dram, capacity: 1GiB, bandwidth: 1GB}]"])


def target_error(tmp_path, text: str, match: str, suffix: str = ".yaml") -> str:
    spec = tmp_path / f"spec{suffix}"
    spec.write_text(text) if isinstance(text, str) else spec.write_bytes(text)
    start = time.monotonic()
    with pytest.raises(TargetError, match=match) as info:
        load_target(str(spec))
    assert time.monotonic() - start < 5
    return one_line(info.value)


def test_yaml_aliases_are_refused(tmp_path):
    target_error(tmp_path, BILLION_LAUGHS, "aliases")
    target_error(tmp_path, "x: &n dram\nname: *n\ntiers: [{name: dram, capacity: 1, bandwidth: 1}]\n", "aliases")


GOOD_TIERS = "tiers: [{name: dram, capacity: 1GiB, bandwidth: 1GB}]\n"


@pytest.mark.parametrize("text,match", [
    ("name: x\n" + GOOD_TIERS + "flops: [1, 2]\n", "'flops' must be a mapping"),
    ("name: x\n" + GOOD_TIERS + "max_threads_per_block: 1e400\n", "'max_threads_per_block' must be an int"),
    ("name: x\n" + GOOD_TIERS + "max_threads_per_block: 1.0e+400\n", "'max_threads_per_block' must be an int"),
    ("name: x\n" + GOOD_TIERS + "max_threads_per_block: 0\n", "'max_threads_per_block' must be an int"),
    ("name: x\n" + GOOD_TIERS + "flops: {float32: .inf}\n", "flops of 'float32' must be a finite positive"),
    ("name: x\n" + GOOD_TIERS + "flops: {float32: 0}\n", "flops of 'float32' must be a finite positive"),
    ("name: x\n" + GOOD_TIERS + "launch_overhead_s: [1]\n", "'launch_overhead_s' must be a number"),
    ("name: [1, 2]\n" + GOOD_TIERS, "'name' must be a string"),
    ("name: " + "n" * 10_000 + "\n" + GOOD_TIERS, "1 to 128 printable characters"),
    ("name: x\n" + GOOD_TIERS + "colour: blue\n", "unknown field 'colour'"),
    ("name: x\ntiers: {a: 1}\n", "'tiers' must be a list"),
    ("name: x\ntiers: []\n", "'tiers' is empty"),
    ("name: x\ntiers: [" + ", ".join(["{name: t%d, capacity: 1, bandwidth: 1}" % i for i in range(17)]) + "]\n",
     "17 tiers, more than the limit of 16"),
    ("name: x\ntiers: [{name: 'a b;import os', capacity: 1, bandwidth: 1}]\n", "must be an identifier"),
    ("name: x\ntiers: [{name: d, capacity: 1, bandwidth: 0}]\n", "bandwidth must be a finite positive"),
    ("name: x\ntiers: [{name: d, capacity: '1" + "0" * 400 + "', bandwidth: 1}]\n", "d capacity"),
    ("name: x\ntiers: [{name: d, capacity: 1, bandwidth: 1, speed: 2}]\n", "unknown field 'speed'"),
    ("name: x\ntiers: [{name: d, capacity: 1, bandwidth: 1}, {name: d, capacity: 1, bandwidth: 1}]\n",
     "tier name 'd' is used twice"),
    ("[" * 5000 + "]" * 5000, "not valid YAML"),
    ("- 1\n" * 20_000, "not valid YAML"),
])
def test_yaml_fields_have_their_documented_types(tmp_path, text, match):
    message = target_error(tmp_path, text, match)
    assert "n" * 100 not in message


@pytest.mark.parametrize("text,match", [
    ('{"name": "x", "tiers": [{"name": "d", "capacity": 1, "bandwidth": 1}], "max_threads_per_block": 1e400}',
     "'max_threads_per_block' must be an int"),
    ('{"name": "x", "tiers": [{"name": "d", "capacity": 1, "bandwidth": 1}], "flops": [1, 2]}',
     "'flops' must be a mapping"),
    ('{"name": "x", "tiers": [{"name": "d", "capacity": 1' + "0" * 5000 + ', "bandwidth": 1}]}', "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ('{"name": "x", "tiers": [{"name": "d", "capacity": NaN, "bandwidth": 1}]}', "capacity"),
])
def test_json_fields_have_their_documented_types(tmp_path, text, match):
    target_error(tmp_path, text, match, suffix=".json")


def test_unreadable_and_oversized_target_files(tmp_path):
    target_error(tmp_path, b"name: \xff\xfe\n", "not UTF-8", suffix=".yaml")
    target_error(tmp_path, "# " + "x" * 300_000 + "\n", "larger than the limit", suffix=".yaml")


def test_dict_targets_are_checked_like_files():
    with pytest.raises(TargetError, match="'flops' must be a mapping") as info:
        load_target({"name": "x", "tiers": [{"name": "d", "capacity": 1, "bandwidth": 1}], "flops": [1, 2]})
    one_line(info.value)
    with pytest.raises(TargetError, match="'max_threads_per_block' must be an int"):
        load_target({"name": "x", "tiers": [{"name": "d", "capacity": 1, "bandwidth": 1}],
                     "max_threads_per_block": float("inf")})


def test_documented_and_round_tripped_targets_still_load(tmp_path):
    spec = tmp_path / "npu.yaml"
    spec.write_text("name: my-npu\ntiers:\n  - {name: sram, capacity: 2MiB, bandwidth: 200GB}\n"
                    "  - {name: dram, capacity: 4GiB, bandwidth: 25GB}\n"
                    "flops: {float32: 1.0e12, float16: 4.0e12}\nlaunch_overhead_s: 2.0e-6\n")
    t = load_target(str(spec))
    assert t.name == "my-npu" and t.flops == {"float32": 1e12, "float16": 4e12} and t.launch_overhead_s == 2e-6
    for preset in PRESETS.values():
        js = tmp_path / f"{preset.name}.json"
        js.write_text(json.dumps(preset.to_dict()))
        assert load_target(str(js)) == preset
        assert load_target(preset.to_dict()) == preset


# ----------------------------------------------------------------------------- budgets

@pytest.mark.parametrize("value", ["1" + "0" * 400, 10**400, "1" + "0" * 30 + "GiB", 2**62 + 1, 1e300])
def test_budgets_above_the_limit_are_typed_errors(value):
    with pytest.raises(BudgetFormatError, match="limit|longer than") as info:
        parse_bytes(value)
    assert "2**62" in one_line(info.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 1.5, -(10**400)])
def test_budgets_that_are_not_byte_counts_are_typed_errors(value):
    with pytest.raises(BudgetFormatError):
        parse_bytes(value)


def test_largest_budget_is_accepted():
    assert parse_bytes(MAX_BYTES) == MAX_BYTES == 2**62
    assert parse_bytes("4.0 GiB") == 4 * 2**30 and parse_bytes(1024.0) == 1024


# ----------------------------------------------------------------------------- plans

@pytest.fixture(scope="module")
def plan_dict():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    cm = memplan.compile(model, (torch.randn(2, 8),))
    return json.loads(cm.plan.to_json()), cm.plan


def test_valid_plans_round_trip(tmp_path, plan_dict):
    data, plan = plan_dict
    path = tmp_path / "m.plan.json"
    path.write_text(plan.to_json())
    assert Plan.load(path) == plan
    assert Plan.from_dict(data) == plan
    assert Plan.load(path).summary() == plan.summary()


def _tampered(data, edit):
    data = json.loads(json.dumps(data))
    edit(data)
    return data


def _first_buffer(data):
    tier = next(iter(data["allocation"]))
    return tier, next(iter(data["allocation"][tier]))


def _set_offset(value):
    def edit(data):
        tier, name = _first_buffer(data)
        data["allocation"][tier][name] = value
    return edit


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(allocation=[]), "field 'allocation' must be an object"),
    (lambda d: d.update(schedule=5), "field 'schedule' must be a list"),
    (lambda d: d.update(schedule=["a", 5]), r"field 'schedule\[1\]' must be a string"),
    (_set_offset("64"), "must be an integer, got the string '64'"),
    (_set_offset(64.0), "must be an integer, got the float 64.0"),
    (_set_offset(True), "must be an integer, got True"),
    (_set_offset(None), "must be an integer, got None"),
    (_set_offset(-64), "must not be negative"),
    (_set_offset(2**62), "out of range"),
    (_set_offset(10**100), "out of range"),
    (lambda d: d.update(stats=[]), "field 'stats' must be an object"),
    (lambda d: d["stats"].update(arena_bytes="lots"), "field 'stats.arena_bytes' must be an integer"),
    (lambda d: d["stats"].pop("arena_bytes"), "'stats.arena_bytes' .* is missing"),
    (lambda d: d["stats"].update(solves=[{"pass": "x"}]), r"'stats.solves\[0\]' lacks its field 'method'"),
    (lambda d: d["stats"].update(live_at_peak=[{"value": 1}]), r"'stats.live_at_peak\[0\].value' must be a string"),
    (lambda d: d["stats"].update(scratch_bytes={"n": -1}), "must not be negative"),
    (lambda d: d.update(placement={"a": 1}), "field 'placement.a' must be a string"),
    (lambda d: d.update(surprise=1), "unknown field 'surprise'"),
    (lambda d: d.update(format="memplan.plan/999"), "plan format 'memplan.plan/999'"),
    (lambda d: d.pop("graph"), "missing field 'graph'"),
    (lambda d: d.update(graph="g" * 100_000), None),   # a long name is fine; it is only data
])
def test_malformed_plans_are_plan_format_errors(tmp_path, plan_dict, edit, match):
    data = _tampered(plan_dict[0], edit)
    path = tmp_path / "bad.plan.json"
    path.write_text(json.dumps(data))
    if match is None:
        Plan.load(path)
        return
    with pytest.raises(PlanFormatError, match=match) as info:
        Plan.load(path)
    assert str(path) in one_line(info.value)
    with pytest.raises(PlanFormatError, match=match):
        Plan.from_dict(data)


@pytest.mark.parametrize("raw,match", [
    (b"{not json", "not valid JSON"),
    (b'{"graph": "\xff"}', "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|must be a JSON object"),
    (b'{"graph": "g", "target": "t", "stats": {"arena_bytes": 1' + b"0" * 5000 + b"}}", "not valid JSON"),
    (b"5", "must be a JSON object"),
])
def test_unreadable_plan_files(tmp_path, raw, match):
    path = tmp_path / "bad.plan.json"
    path.write_bytes(raw)
    with pytest.raises(PlanFormatError, match=match) as info:
        Plan.load(path)
    one_line(info.value)


def test_memplan_show_reports_a_tampered_plan_in_one_line(tmp_path, plan_dict, capsys):
    from memplan.cli import main
    data = _tampered(plan_dict[0], _set_offset(2**62))
    path = tmp_path / "m.plan.json"
    path.write_text(json.dumps(data))
    assert main(["show", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("memplan: error:") and "out of range" in err and err.count("\n") == 1
