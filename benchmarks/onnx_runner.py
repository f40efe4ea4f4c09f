"""The ONNX backend test suite by onnx's own runner, for memplan and onnxruntime side by side.

``onnx.backend.test.BackendTest`` builds one unittest case per suite case; this
script runs them under ``unittest`` for each backend (CPU cases only) and counts
passed / failed / errored / skipped per kind (node, real, simple,
pytorch-converted, pytorch-operator). The comparison is onnx's
(``assert_similar_outputs``: the case's own rtol/atol, dtypes and shapes equal),
the same for both backends. A skip is a case the backend declined
(``is_compatible`` False, or ``SkipTest``).

Backends: ``memplan`` (``memplan.testing.onnx_backend``) and ``onnxruntime``
(``onnxruntime.backend``, onnxruntime's own ONNX backend module).

Usage::

    python benchmarks/onnx_runner.py                          # both backends, node cases
    python benchmarks/onnx_runner.py --backends memplan --kinds node,real --include 'lstm|gru'
    python benchmarks/onnx_runner.py --json out.json --markdown out.md

``--json`` writes every case's status per backend (diff two runs with it).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import time
import unittest
import warnings
from collections import Counter

KIND_CLASSES = {  # BackendTest's generated unittest classes, by suite kind
    "node": "OnnxBackendNodeModelTest",
    "real": "OnnxBackendRealModelTest",
    "simple": "OnnxBackendSimpleModelTest",
    "pytorch-converted": "OnnxBackendPyTorchConvertedModelTest",
    "pytorch-operator": "OnnxBackendPyTorchOperatorModelTest",
}


def load_backend(name: str):
    if name == "memplan":
        from memplan.testing import onnx_backend
        return onnx_backend
    if name == "onnxruntime":
        import onnxruntime
        import onnxruntime.backend
        onnxruntime.set_default_logger_severity(4)
        return onnxruntime.backend
    raise SystemExit(f"unknown backend {name!r} (memplan, onnxruntime)")


class _Recorder(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.status: dict[str, str] = {}
        self.messages: dict[str, str] = {}

    def addSuccess(self, test):
        super().addSuccess(test)
        self.status[test.id()] = "pass"

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.status[test.id()] = "fail"
        self.messages[test.id()] = str(err[1]).strip().splitlines()[0][:200] if str(err[1]).strip() else ""

    def addError(self, test, err):
        super().addError(test, err)
        self.status[test.id()] = "error"
        self.messages[test.id()] = f"{err[0].__name__}: {str(err[1]).strip()[:200]}".splitlines()[0]

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.status[test.id()] = "skip"


def run_backend(name: str, kinds: list[str], include: str | None) -> dict[str, str]:
    """{"kind/test_name": status} for one backend."""
    import onnx.backend.test
    backend = load_backend(name)
    bt = onnx.backend.test.BackendTest(backend, __name__)
    bt.include(r"_cpu$" if include is None else rf"({include}).*_cpu$")
    suite = unittest.TestSuite()
    cases = bt.test_cases
    for kind in kinds:
        cls = cases.get(KIND_CLASSES[kind])
        if cls is not None:
            suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(cls))
    runner = unittest.TextTestRunner(stream=io.StringIO(), resultclass=_Recorder, verbosity=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = runner.run(suite)
    by_class = {v: k for k, v in KIND_CLASSES.items()}
    out, messages = {}, {}
    for test_id, status in result.status.items():
        cls_name, test_name = test_id.split(".")[-2:]
        if not test_name.endswith("_cpu") or (include is not None and not re.search(include, test_name)):
            continue  # the other devices' cases and the cases not selected (skipped by the include filter)
        key = f"{by_class.get(cls_name, cls_name)}/{test_name}"
        out[key] = status
        if test_id in result.messages:
            messages[key] = result.messages[test_id]
    return out, messages


def table(results: dict[str, dict[str, str]], kinds: list[str]) -> str:
    names = list(results)
    lines = ["| kind | " + " | ".join(f"{n} (pass / fail / error / skip)" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    totals = {n: Counter() for n in names}
    for kind in kinds:
        row = []
        for n in names:
            c = Counter(s for k, s in results[n].items() if k.startswith(kind + "/"))
            totals[n].update(c)
            row.append(f"{c['pass']} / {c['fail']} / {c['error']} / {c['skip']}")
        lines.append(f"| {kind} | " + " | ".join(row) + " |")
    if len(kinds) > 1:
        lines.append("| all | " + " | ".join(
            f"**{t['pass']}** / {t['fail']} / {t['error']} / {t['skip']}" for t in totals.values()) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="memplan,onnxruntime")
    ap.add_argument("--kinds", default="node")
    ap.add_argument("--include", default=None, help="regex on case names (test_...)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--failures", type=int, default=30, help="failed/errored cases to list per backend")
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for k in kinds:
        if k not in KIND_CLASSES:
            raise SystemExit(f"unknown kind {k!r} ({', '.join(KIND_CLASSES)})")
    results, messages, times = {}, {}, {}
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        t0 = time.perf_counter()
        results[name], messages[name] = run_backend(name, kinds, args.include)
        times[name] = time.perf_counter() - t0
        print(f"{name}: {Counter(results[name].values())} in {times[name]:.0f} s", file=sys.stderr)
    md = table(results, kinds)
    print(md)
    for name, msgs in messages.items():
        bad = [(k, m) for k, m in msgs.items()]
        if bad and args.failures:
            print(f"\n{name}: {len(bad)} failed or errored; first {min(len(bad), args.failures)}:")
            for k, m in sorted(bad)[: args.failures]:
                print(f"  {k}: {m}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "messages": messages, "seconds": times}, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
