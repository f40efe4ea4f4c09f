"""ONNX backend-test-suite conformance for memplan, onnxruntime or any ONNX Backend.

Runs the test suite shipped inside the ``onnx`` wheel (node, real, simple,
pytorch-converted, pytorch-operator cases) case by case through
``tests/frontend/onnx_suite.py`` and prints, per kind, how many cases exist,
how many the backend claims (see ``claimed`` below), how many pass, how many
claimed cases fail, and the list of claimed failures.

Usage::

    python benchmarks/onnx_conformance.py --backend onnxruntime
    python benchmarks/onnx_conformance.py --backend memplan --kinds node --include 'test_(conv|relu)'
    python benchmarks/onnx_conformance.py --backend my.module:MyBackend --markdown out.md --json out.json

``--backend`` is ``onnxruntime`` (the :class:`OrtBackend` wrapper below),
``memplan`` (``memplan.testing.onnx_backend:MemplanBackend``) or
``module:Class`` for any ``onnx.backend.base.Backend`` subclass.

Options: ``--kinds node,real,...`` (default all five), ``--include REGEX``
(``re.search`` on case names), ``--failures N`` (claimed failures to list),
``--markdown FILE`` (write the report), ``--json FILE`` (per-case statuses,
handy for diffing two backends), ``-v`` (one line per case).

Backend protocol (all optional beyond ``prepare``/``run``): a classmethod
``claimed(model) -> bool`` (False: the case is counted as unsupported and not
run), a classmethod ``unclaimed_ops(model)`` (names for the message), and a
class attribute ``Unsupported`` (exception class that ``prepare`` or ``run``
raise to decline a model).  ``unittest.SkipTest`` also declines.  See
``tests/frontend/onnx_suite.py``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import sys
import time
import warnings
from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_onnx_suite():
    """Import ``tests/frontend/onnx_suite.py`` by path (``tests`` need not be a package)."""
    path = os.path.join(REPO_ROOT, "tests", "frontend", "onnx_suite.py")
    spec = importlib.util.spec_from_file_location("memplan_onnx_suite", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


onnx_suite = _load_onnx_suite()


# --------------------------------------------------------------------------- #
# onnxruntime as an ONNX Backend
# --------------------------------------------------------------------------- #


class OrtUnsupported(Exception):
    """onnxruntime declined the model (no kernel for an op/type, unknown op version)."""


class OrtRep(BackendRep):
    """A prepared onnxruntime session; ``run`` takes inputs in graph-input order."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def run(self, inputs: Any, **kwargs: Any) -> list[Any]:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if not isinstance(inputs, (list, tuple)):
                inputs = [inputs]
            feeds = dict(zip(self.input_names, inputs))
        try:
            return list(self.session.run(None, feeds))
        except RuntimeError as exc:
            # onnxruntime's Python API cannot take bfloat16/float8/int4 numpy
            # arrays (ml_dtypes) as inputs: a limit of the binding, not a bug.
            if "can't be converted to MLDataType" in str(exc):
                exotic = sorted(
                    {
                        x.dtype.name
                        for x in feeds.values()
                        if isinstance(x, np.ndarray) and x.dtype.type.__module__.startswith("ml_dtypes")
                    }
                )
                what = ", ".join(exotic) or str(exc)
                raise OrtUnsupported(f"onnxruntime Python API cannot feed {what}") from exc
            raise


class OrtBackend(Backend):
    """Minimal onnxruntime backend (CPU execution provider, no fallback).

    ``claimed(model)`` is a static check against onnxruntime's CPU kernel
    registry: every node (subgraphs included) must have a kernel whose
    version range covers the op's schema version at the model's opset, or be
    an ONNX function op (onnxruntime expands those); ``Constant`` needs no
    kernel.  It is op-level only, so onnxruntime can still decline a model
    later, which raises :class:`OrtUnsupported`: session creation failing with
    ``NOT_IMPLEMENTED`` (no kernel for these element types), ``INVALID_GRAPH``
    (ORT's older schema rejects a model that passes ``onnx.checker``), or
    ``FAIL`` matching one of :attr:`_DECLINE_PATTERNS` (IR version 14, unreleased
    opset 27/28, unknown function op, "not supported" in a kernel
    constructor); and ``run`` refusing a numpy dtype it cannot bind
    (bfloat16, float8, int4 inputs).  Any other error counts against it.
    """

    Unsupported = OrtUnsupported
    _kernels: dict[tuple[str, str], list[tuple[int, int]]] | None = None

    # Ops onnxruntime handles without a kernel (turned into initializers at load time).
    _NO_KERNEL_NEEDED = frozenset({("", "Constant")})

    # Substrings of session-creation FAIL messages in which onnxruntime says it
    # does not support the model (rather than failing on something it supports).
    _DECLINE_PATTERNS = tuple(
        re.compile(p)
        for p in (
            r"Unsupported model IR version: \d+, max supported IR version: \d+",  # IR 14 (opset 28)
            r"Opset \d+ is under development",  # opset 27+: ORT refuses unreleased opsets
            r"\S+ is not a registered function/op",  # e.g. ai.onnx.preview FlexAttention
            r"[^.:]* are not supported",  # kernel constructors, e.g. batchwise RNN (layout=1)
        )
    )

    @classmethod
    def _kernel_ranges(cls) -> dict[tuple[str, str], list[tuple[int, int]]]:
        if cls._kernels is None:
            from onnxruntime.capi import onnxruntime_pybind11_state as C

            kernels: dict[tuple[str, str], list[tuple[int, int]]] = {}
            for k in C.get_all_opkernel_def():
                if k.provider == "CPUExecutionProvider":
                    domain = "" if k.domain in ("", "ai.onnx") else k.domain
                    kernels.setdefault((domain, k.op_name), []).append(tuple(k.version_range))
            cls._kernels = kernels
        return cls._kernels

    @classmethod
    def unclaimed_ops(cls, model: onnx.ModelProto) -> list[str]:
        """``"[domain:]Op-<schema version>"`` of the ops without a CPU kernel or function body."""
        opsets = {("" if i.domain in ("", "ai.onnx") else i.domain): i.version for i in model.opset_import}
        kernels = cls._kernel_ranges()
        missing = []
        for domain, op_type in sorted(onnx_suite.model_op_types(model)):
            if (domain, op_type) in cls._NO_KERNEL_NEEDED:
                continue
            name = f"{domain}:{op_type}" if domain else op_type
            opset = opsets.get(domain)
            if opset is None:
                missing.append(f"{name} (domain not imported)")
                continue
            try:
                schema = onnx.defs.get_schema(op_type, opset, domain)
            except onnx.defs.SchemaError:
                schema = None
            since = schema.since_version if schema is not None else opset
            if any(lo <= since <= hi for lo, hi in kernels.get((domain, op_type), ())):
                continue
            if schema is not None and (schema.has_function or schema.has_context_dependent_function):
                continue  # onnxruntime expands function ops it has no kernel for
            missing.append(f"{name}-{since}")
        return missing

    @classmethod
    def claimed(cls, model: onnx.ModelProto) -> bool:
        """True when every op has a CPU kernel (or function body) at the model's opset."""
        return not cls.unclaimed_ops(model)

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> OrtRep:
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as C

        ort.set_default_logger_severity(4)  # errors come back as exceptions anyway
        options = ort.SessionOptions()
        options.log_severity_level = 4
        try:
            session = ort.InferenceSession(
                model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except (C.NotImplemented, C.InvalidGraph) as exc:
            # NOT_IMPLEMENTED: no kernel for these types/version.  INVALID_GRAPH:
            # ORT's (older) schemas reject a model that onnx.checker accepts, e.g.
            # a new attribute of Attention-24: ORT does not know that op version.
            text = str(exc)
            match = re.search(r"Could not find an implementation for \S+|Failed to find kernel for \S+", text)
            short = match.group(0) if match else text.split(" : ", 3)[-1].strip()
            raise OrtUnsupported(short) from exc
        except C.Fail as exc:
            for pattern in cls._DECLINE_PATTERNS:
                match = pattern.search(str(exc))
                if match:
                    raise OrtUnsupported(match.group(0).strip()) from exc
            raise
        session.disable_fallback()
        return OrtRep(session)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


# --------------------------------------------------------------------------- #
# Backend selection
# --------------------------------------------------------------------------- #


def resolve_backend(spec: str) -> type:
    """``onnxruntime`` | ``memplan`` | ``module:Class`` -> backend class."""
    if spec == "onnxruntime":
        return OrtBackend
    if spec == "memplan":
        spec = "memplan.testing.onnx_backend:MemplanBackend"
    if ":" not in spec:
        raise SystemExit(f"--backend must be onnxruntime, memplan or module:Class, not {spec!r}")
    module_name, class_name = spec.split(":", 1)
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing and module_name.startswith(missing):  # the module itself (or a parent) is absent
            raise SystemExit(f"backend module {module_name!r} does not exist yet ({exc})") from None
        raise  # the module exists but fails to import: show the real traceback
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise SystemExit(f"module {module_name!r} has no class {class_name!r}") from None


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def _pct(num: int, den: int) -> str:
    return f"{100.0 * num / den:.1f}%" if den else "-"


def build_report(
    backend_name: str,
    results: list[tuple[Any, Any]],
    kinds: list[str],
    seconds: float,
    n_failures: int,
) -> str:
    """The report as Markdown (also readable in a terminal).

    One row per kind plus ``all``; then the first ``n_failures`` claimed
    failures (fail or error) with their message's first line, and the most
    common reasons for ``unsupported``.
    """
    lines = [f"## ONNX backend test suite: {backend_name}", ""]
    lines.append("| kind | total | claimed | passed | failed (claimed) | pass/total | pass/claimed | seconds |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind in kinds + ["all"]:
        rows = results if kind == "all" else [r for r in results if r[0].kind == kind]
        if kind != "all" and not rows:
            continue
        c = onnx_suite.summarize(rows)
        secs = sum(res.seconds for _, res in rows)
        lines.append(
            f"| {kind} | {c['total']} | {c['claimed']} | {c['pass']} | {c['failed_claimed']} "
            f"| {_pct(c['pass'], c['total'])} | {_pct(c['pass'], c['claimed'])} | {secs:.1f} |"
        )
    lines.append("")
    c = onnx_suite.summarize(results)
    lines.append(
        f"{c['pass']} passed / {c['claimed']} claimed / {c['total']} total "
        f"({c['fail']} fail, {c['error']} error, {c['unsupported']} unsupported); wall {seconds:.1f} s"
    )

    failures = [(case, res) for case, res in results if res.status in ("fail", "error")]
    if failures and n_failures:
        shown = min(n_failures, len(failures))
        lines += ["", f"### Failures among claimed cases (first {shown} of {len(failures)})", ""]
        for case, res in failures[:n_failures]:
            lines.append(f"- `{case.kind}/{case.name}` **{res.status}**: {res.first_line[:200]}")

    unsupported = Counter(res.first_line[:90] for _, res in results if res.status == "unsupported")
    if unsupported:
        lines += ["", "### Most common reasons for unsupported", ""]
        for reason, n in unsupported.most_common(8):
            lines.append(f"- {n} × {reason}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", required=True, help="onnxruntime | memplan | module:Class")
    parser.add_argument(
        "--kinds", default=",".join(onnx_suite.ALL_KINDS), help="comma-separated kinds (default: all)"
    )
    parser.add_argument("--include", default=None, help="regex on case names (test_abs or test_abs_cpu)")
    parser.add_argument("--markdown", default=None, help="also write the report to this file")
    parser.add_argument("--json", default=None, help="write per-case results to this JSON file")
    parser.add_argument("--failures", type=int, default=30, help="how many claimed failures to list")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case as it runs")
    args = parser.parse_args(argv)

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in kinds:
        if kind not in onnx_suite.ALL_KINDS:
            parser.error(f"unknown kind {kind!r}; choose from {','.join(onnx_suite.ALL_KINDS)}")
    backend = resolve_backend(args.backend)

    results = []
    start = time.perf_counter()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # the node-case generators warn about overflows
        for case in onnx_suite.iter_cases(kinds, include=args.include):
            res = onnx_suite.run_case(backend, case)
            if args.verbose:
                print(f"{res.status:12s} {res.seconds:7.3f}s {case.kind}/{case.name}  {res.first_line[:100]}")
            if case.kind != "node":
                case.release()  # on-disk models are re-read on demand; keep memory flat
            results.append((case, res))
    seconds = time.perf_counter() - start

    report = build_report(args.backend, results, kinds, seconds, args.failures)
    print(report)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [
                    {
                        "kind": case.kind,
                        "name": case.name,
                        "status": res.status,
                        "seconds": round(res.seconds, 4),
                        "message": res.first_line[:500],
                    }
                    for case, res in results
                ],
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
