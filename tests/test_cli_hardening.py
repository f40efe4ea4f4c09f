"""The command line under bad input: every failure is one typed line on stderr, checked before the
work where it can be, and a failed run writes nothing (issue #8, defects 14 and 15).

Most tests call ``memplan.cli.main`` in this process (fast); ``test_cli.py`` runs the
command as a subprocess.
"""
import subprocess
import sys

import onnx
import onnx.helper as oh
import pytest

import memplan
from memplan.cli import main
from tests.test_cli import save_tiny_onnx


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_onnx(tmp_path_factory.mktemp("models"), rows=2)


@pytest.fixture
def no_compile(monkeypatch):
    """Fail (as an internal error) if the command gets as far as compiling."""
    def refuse(*args, **kwargs):
        raise AssertionError("compiled although the command line was bad")
    monkeypatch.setattr(memplan, "compile", refuse)


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(capsys, *args, fragments=(), code=1):
    status, _, err = run(capsys, *args)
    lines = [line for line in err.strip().splitlines() if "USDT:" not in line]
    assert status == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith("memplan: error: "), lines[0]
    assert "internal error" not in lines[0] and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def files_under(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) if path.exists() else []


# ---------------------------------------------------------------- -o is checked first
def test_output_naming_an_existing_file_fails_before_compiling(capsys, model_path, tmp_path, no_compile):
    existing = tmp_path / "taken"
    existing.write_text("keep me")
    one_line_error(capsys, "lower", model_path, "-o", existing, fragments=("-o", "taken", "existing file"))
    assert existing.read_text() == "keep me"


def test_output_under_a_file_fails_before_compiling(capsys, model_path, tmp_path, no_compile):
    (tmp_path / "afile").write_text("")
    one_line_error(capsys, "lower", model_path, "-o", tmp_path / "afile" / "sub", fragments=("cannot be created",))


def test_output_file_blocked_by_a_folder_fails_before_compiling(capsys, model_path, tmp_path, no_compile):
    (tmp_path / "tiny.py").mkdir()
    one_line_error(capsys, "lower", model_path, "-o", tmp_path, fragments=("'tiny.py'", "folder"))


def test_dump_folder_that_is_a_file_fails_before_compiling(capsys, model_path, tmp_path, no_compile):
    (tmp_path / "dumps").write_text("")
    one_line_error(capsys, "lower", model_path, "--dump-ir-after", "all", "-o", tmp_path,
                   fragments=("dumps", "existing file"))


# ---------------------------------------------------------------- a failed run writes nothing
def test_report_without_matplotlib_fails_before_compiling(capsys, model_path, tmp_path, monkeypatch, no_compile):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "out"
    one_line_error(capsys, "lower", model_path, "--emit", "ir,python,plan,report", "-o", out,
                   fragments=("--emit report", "matplotlib"))
    assert not out.exists()


def test_report_failing_late_writes_nothing(capsys, model_path, tmp_path, monkeypatch):
    import memplan.report

    def broken(plan, path):
        raise ImportError("matplotlib backend Agg is missing")
    monkeypatch.setattr(memplan.report, "plot_plan", broken)
    out = tmp_path / "out"
    one_line_error(capsys, "lower", model_path, "--emit", "ir,python,plan,report", "-o", out,
                   fragments=("report",))
    assert files_under(out) == []


def test_failed_budget_run_leaves_no_dumps(capsys, model_path, tmp_path):
    out = tmp_path / "out"
    one_line_error(capsys, "lower", model_path, "--budget", "10", "--dump-ir-after", "all", "-o", out,
                   fragments=("no plan fits the memory budget of 10 B",))
    assert files_under(out) == []


def test_successful_run_writes_everything_and_no_temporaries(capsys, model_path, tmp_path):
    out = tmp_path / "out"
    status, stdout, err = run(capsys, "lower", model_path, "--emit", "ir,python,plan,report",
                              "--dump-ir-after", "schedule,allocate", "-o", out)
    assert status == 0, err
    files = files_under(out)
    assert {"tiny.mir", "tiny.py", "tiny.plan.json", "tiny.report.png", "tiny.report.html",
            "dumps/09-schedule.mir", "dumps/10-allocate.plan.json"} <= set(files)
    assert not [f for f in files if "memplan-tmp" in f]
    assert f"wrote {out / 'tiny.mir'}" in stdout


def test_api_dumps_are_written_only_on_success(tmp_path, model_path):
    with pytest.raises(memplan.MemplanError):
        memplan.compile(model_path, target="mcu", memory_budget=10, dump_ir_after="all", dump_dir=tmp_path / "d")
    assert not (tmp_path / "d").exists()
    memplan.compile(model_path, dump_ir_after="all", dump_dir=tmp_path / "d")
    assert "00-verify.mir" in files_under(tmp_path / "d")


# ---------------------------------------------------------------- bad input files
@pytest.mark.parametrize("make,fragments", [
    (lambda p: None, ("does not exist",)),
    (lambda p: p.mkdir(), ("is not a file",)),
    (lambda p: p.write_bytes(b""), ("no ONNX graph",)),
    (lambda p: p.write_bytes(b"\xff\xfe\x00garbage" * 10), ("model.onnx",)),
])
def test_lower_bad_model_files(capsys, tmp_path, make, fragments):
    path = tmp_path / "model.onnx"
    make(path)
    one_line_error(capsys, "lower", path, "-o", tmp_path / "out", fragments=fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,make,fragments", [
    ("nope.mir", lambda p: None, ("does not exist",)),
    ("folder.mir", lambda p: p.mkdir(), ("is a folder",)),
    ("empty.mir", lambda p: p.write_text(""), ("empty IR text",)),
    ("latin1.mir", lambda p: p.write_bytes("graph g(%x: f32[2]) { # caf\xe9\n".encode("latin-1")),
     ("not UTF-8 text", "byte 0xe9 at offset 27")),
    ("model.onnx", lambda p: p.write_bytes(b"\x08\x07\x12\x04\xcc\xff\xfe"), ("not UTF-8 text",)),
    ("empty.plan.json", lambda p: p.write_text(""), ("empty.plan.json",)),
    ("binary.plan.json", lambda p: p.write_bytes(b"\xff\xfe{}"), ("binary.plan.json",)),
])
def test_show_bad_files(capsys, tmp_path, name, make, fragments):
    path = tmp_path / name
    make(path)
    one_line_error(capsys, "show", path, fragments=fragments)


def test_show_plan_beside_non_utf8_ir(capsys, model_path, tmp_path):
    assert run(capsys, "lower", model_path, "-o", tmp_path)[0] == 0
    (tmp_path / "tiny.mir").write_bytes(b"\xff" * 16)
    one_line_error(capsys, "show", tmp_path / "tiny.plan.json", fragments=("tiny.mir", "not UTF-8 text"))


# ---------------------------------------------------------------- bad options
@pytest.mark.parametrize("args,fragments", [
    (["--input-shape", "x"], ("is not NAME=D1xD2x...",)),
    (["--input-shape", "x=2x-4"], ("non-negative integers",)),
    (["--input-shape", "x=2x" + "9" * 5000], ("more than 16 digits",)),
    (["--input-shape", "x=2x4,x=2x4"], ("given twice",)),
    (["--input-shape", "x=2x\u00b2"], ("non-negative integers",)),
    (["--budget", "1" + "0" * 400], ("--budget",)),
    (["--budget", "1e400"], ("--budget",)),
    (["--budget", "-5"], ("--budget",)),
    (["--emit", "ir,,bogus"], ("--emit 'bogus'",)),
    (["--emit", "x" * 10000], ("--emit 'xxxx",)),
])
def test_bad_options_fail_before_compiling(capsys, model_path, tmp_path, no_compile, args, fragments):
    line = one_line_error(capsys, "lower", model_path, *args, "-o", tmp_path / "out", fragments=fragments)
    assert len(line) < 500
    assert not (tmp_path / "out").exists()


def test_huge_input_shapes_are_typed_errors(capsys, tmp_path):
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    path = tmp_path / "sym.onnx"
    onnx.save(oh.make_model(oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                            opset_imports=[oh.make_opsetid("", 17)]), path)
    one_line_error(capsys, "lower", path, "--input-shape", "x=9999999999999999x4", "-o", tmp_path / "o",
                   fragments=("example input 'x'", "2**53 bytes"))
    one_line_error(capsys, "lower", path, "--input-shape", "x=99999999x4", "--target", "mcu", "-o", tmp_path / "o",
                   fragments=("tier 'flash' holds 2.00 MiB", "%x 1.49 GiB"))
    assert not (tmp_path / "o").exists()


def test_usage_errors_are_one_line(capsys, model_path):
    with pytest.raises(SystemExit) as info:
        main(["lower", str(model_path), "--no-such-option"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("memplan: error: unrecognized arguments: --no-such-option")


def test_error_text_from_a_file_stays_on_one_line(capsys, tmp_path):
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    node = oh.make_node("NoSuchOp", ["x"], ["y"], name="evil\nname\r\x1b[31m")
    path = tmp_path / "evil.onnx"
    onnx.save(oh.make_model(oh.make_graph([node], "g", [x], [y]), opset_imports=[oh.make_opsetid("", 17)]), path)
    line = one_line_error(capsys, "lower", path, "-o", tmp_path / "out", fragments=("NoSuchOp", "evil\\nname"))
    assert "\x1b" not in line


def test_subprocess_existing_output_file(model_path, tmp_path):
    existing = tmp_path / "taken"
    existing.write_text("")
    r = subprocess.run([sys.executable, "-m", "memplan.cli", "lower", str(model_path), "-o", str(existing)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"memplan: error: -o {str(existing)!r} is an existing file, not a folder"]
