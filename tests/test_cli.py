"""The memplan command line, run as a user would (a subprocess), good and bad input."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import numpy_helper


def memplan_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "memplan.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def save_tiny_onnx(folder, rows="N"):
    """``folder/tiny.onnx``: x[rows, 4] @ w[4, 3], relu (``rows`` an int or a symbolic dim name)."""
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [rows, 4])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.random.default_rng(0).random((4, 3), dtype=np.float32), "w")
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"], name="fc"), oh.make_node("Relu", ["h"], ["y"], name="act")]
    model = oh.make_model(oh.make_graph(nodes, "tiny", [x], [y], [w]), opset_imports=[oh.make_opsetid("", 17)])
    path = folder / "tiny.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_onnx(tmp_path_factory.mktemp("models"))


def test_lower_emits_ir_python_plan_and_show_reverifies(model_path, tmp_path):
    r = memplan_cli("lower", model_path, "--input-shape", "x=2x4", "--target", "mcu", "--budget", "1KiB",
                    "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "planned peak" in r.stdout
    mir, py, plan = tmp_path / "tiny.mir", tmp_path / "tiny.py", tmp_path / "tiny.plan.json"
    assert "aten.matmul.default(%x, %w) loc('fc', 'onnx::MatMul')" in mir.read_text()
    assert "def run(weights, x):" in py.read_text()
    assert json.loads(plan.read_text())["target"] == "mcu"
    shown = memplan_cli("show", mir)
    assert shown.returncode == 0 and "IR verified" in shown.stdout and "graph tiny" in shown.stdout
    shown = memplan_cli("show", plan)
    assert shown.returncode == 0 and "plan re-verified" in shown.stdout


def test_dump_ir_after_all(model_path, tmp_path):
    r = memplan_cli("lower", model_path, "--input-shape", "x=2x4", "--dump-ir-after", "all", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    dumps = sorted(p.name for p in (tmp_path / "dumps").iterdir())
    assert "03-canonicalize.mir" in dumps and "10-allocate.plan.json" in dumps
    assert "09-schedule.plan.json" not in dumps, "a plan report is written once the graph is planned"
    header = (tmp_path / "dumps" / "00-verify.mir").read_text().splitlines()[0]
    assert header.startswith("# memplan IR after pass 'verify'")


def test_targets_lists_presets():
    r = memplan_cli("targets")
    assert r.returncode == 0
    for name in ("cpu", "h100", "a100", "rtx4090", "mcu"):
        assert name in r.stdout


def _one_line_error(r, *fragments):
    assert r.returncode != 0
    lines = [line for line in r.stderr.strip().splitlines() if "USDT:" not in line]  # profiler chatter
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("memplan: error:")
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def test_missing_file(tmp_path):
    _one_line_error(memplan_cli("lower", tmp_path / "nope.onnx", "-o", tmp_path), "nope.onnx")


def test_truncated_file(model_path, tmp_path):
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(model_path.read_bytes()[:40])
    _one_line_error(memplan_cli("lower", bad, "-o", tmp_path), "cut.onnx")


def test_unsupported_onnx_op(tmp_path):
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    node = oh.make_node("FancyOp", ["x"], ["y"], name="mystery", domain="com.example")
    model = oh.make_model(oh.make_graph([node], "g", [x], [y]),
                          opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.example", 1)])
    path = tmp_path / "fancy.onnx"
    onnx.save(model, path)
    _one_line_error(memplan_cli("lower", path, "-o", tmp_path), "FancyOp", "mystery")


@pytest.mark.parametrize("args,fragment", [
    (["--target", "tpu9"], "unknown target 'tpu9'"),
    (["--budget", "lots"], "cannot read 'lots' as bytes"),
    (["--budget", "10"], "no plan fits the memory budget of 10 B"),
    (["--emit", "svg"], "--emit 'svg'"),
    (["--dump-ir-after", "fuse_everything"], "no such pass"),
    (["--input-shape", "x=2x5"], "x"),
])
def test_bad_options(model_path, tmp_path, args, fragment):
    extra = [] if "--input-shape" in args else ["--input-shape", "x=2x4"]
    _one_line_error(memplan_cli("lower", model_path, *extra, *args, "-o", tmp_path), fragment)


def test_symbolic_input_without_shape_is_named(model_path, tmp_path):
    _one_line_error(memplan_cli("lower", model_path, "-o", tmp_path), "x", "--input-shape")


def test_show_rejects_corrupt_ir(tmp_path):
    bad = tmp_path / "bad.mir"
    bad.write_text("graph g(%x: f32[2]) {\n  %y: f32[3] = aten.relu.default(%x)\n  return %y\n}\n")
    _one_line_error(memplan_cli("show", bad), "node y", "f32[3]")


def test_pipeline_and_options_reach_the_passes(model_path, tmp_path):
    r = memplan_cli("lower", model_path, "--input-shape", "x=2x4", "--option", "allocation=storage",
                    "--option", "schedule_time_limit=1", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "tiny.mir").read_text()
    assert 'storage %storage_dram = memplan.storage("dram", ' in text and "slot(%storage_dram, 0, " in text
    shown = memplan_cli("show", tmp_path / "tiny.mir")
    assert shown.returncode == 0 and "planned IR verified" in shown.stdout, shown.stdout + shown.stderr
    r = memplan_cli("lower", model_path, "--input-shape", "x=2x4", "--pipeline", "verify,canonicalize,schedule",
                    "--emit", "ir", "-o", tmp_path / "short")
    assert r.returncode == 0, r.stderr
    assert "slot(" not in (tmp_path / "short" / "tiny.mir").read_text(), "no allocate pass: nothing allocated"


@pytest.mark.parametrize("args,message", [
    (["--option", "alocation=storage"], "unknown option 'alocation' for this pipeline; its passes take: "),
    (["--option", "allocation=heap"], "option allocation='heap': must be one of auto, storage, free"),
    (["--option", "schedule_time_limit=soon"], "option schedule_time_limit='soon': must be float"),
    (["--option", "allocation"], "--option 'allocation': write key=value"),
    (["--pipeline", "verify,fuse_everything"], "unknown pass 'fuse_everything'; passes: "),
    (["--pipeline", "verify,allocate", "--option", "conv_kernel=aten"], "unknown option 'conv_kernel'"),
])
def test_bad_pipeline_or_option_is_one_line_and_writes_nothing(model_path, tmp_path, args, message):
    out = tmp_path / "out"
    r = memplan_cli("lower", model_path, "--input-shape", "x=2x4", *args, "-o", out)
    assert r.returncode == 1 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_passes_lists_every_pass_with_its_options():
    r = memplan_cli("passes")
    assert r.returncode == 0, r.stderr
    for name in ("legalize", "canonicalize", "inplace", "schedule", "allocate", "verify_plan"):
        assert name in r.stdout
    assert "allocation" in r.stdout and "schedule_time_limit" in r.stdout
