"""Run the ONNX backend test suite (shipped inside the ``onnx`` wheel) case by case.

This is a helper module, not a pytest file: it turns the suite into plain
:class:`SuiteCase` objects and runs one case against any
:class:`onnx.backend.base.Backend` subclass, returning a :class:`Result`
instead of raising.  ``benchmarks/onnx_conformance.py`` builds its tables on
top of it, and tests can use it to assert on chosen cases.

What it replicates from onnx's own runner
(``onnx/backend/test/runner/__init__.py``, onnx 1.23):

* ``node`` cases are generated in memory by
  ``onnx.backend.test.loader.load_model_tests(kind="node")``: each carries its
  ``ModelProto`` and its ``data_sets`` (inputs may be ``TensorProto`` objects,
  numpy scalars, lists for sequences, ``None`` for an empty optional).
* ``simple`` / ``pytorch-converted`` / ``pytorch-operator`` cases are
  directories holding ``model.onnx`` and ``test_data_set_*/{input,output}_*.pb``;
  each ``.pb`` is parsed as a TensorProto, SequenceProto or OptionalProto
  according to the type of the matching graph input/output.
* ``real`` cases have no model in their directory, only a ``data.json`` whose
  ``url`` is ``onnx/backend/test/data/light/light_<name>.onnx`` (relative to
  the directory that holds the ``onnx`` package).  The runner feeds each
  non-initializer graph input with deterministic dummy data
  (``arange(n).reshape(shape) / n`` in float32, unknown dims set to 1) and
  compares against ``light_<name>_output_<i>.pb`` next to the model, falling
  back to ``onnx.reference.ReferenceEvaluator`` when those files are missing.
  We do the same in memory (the runner writes the data under ``~/.onnx``;
  we write nothing).
* Outputs are compared like ``Runner.assert_similar_outputs``: same number of
  outputs, same shape, same dtype, then ``np.testing.assert_allclose`` with
  the case rtol/atol (strings compared exactly, bfloat16 compared in float32
  with rtol at least 2**-6); sequence outputs element by element.

Deliberate differences from the runner (both make the harness fairer, not
looser): numpy scalars in node data are passed as 0-d arrays (the runner
passes ``np.float32(...)`` objects, which onnxruntime's backend rejects: 52
node cases), and sequence elements are compared as whole tensors (the runner
recurses into them with ``len()``, which crashes on 0-d elements:
``test_loop16_seq_none``).  Outputs that are torch tensors are converted with
``.numpy()``.  Only the CPU device is run.

Support claims.  A backend may expose

* a classmethod ``claimed(model) -> bool``: True when the backend claims every
  op of the model.  Unclaimed cases are not run and count as ``unsupported``.
  Without it, every case is claimed.
* optionally, a classmethod ``unclaimed_ops(model) -> Iterable[str]`` naming
  the ops it does not claim; only used to word the ``unsupported`` message.
* a class attribute ``Unsupported``: an exception class (or tuple of them)
  that ``prepare``/``run`` raise to say "I do not support this model" after
  all.  ``unittest.SkipTest`` (which onnx's own
  ``BackendIsNotSupposedToImplementIt`` and onnxruntime's backend raise) is
  treated the same way.

Statuses: ``pass``; ``fail`` (ran, outputs differ from the reference);
``error`` (an exception in ``claimed``/``prepare``/``run``, or a case whose
data could not be loaded); ``unsupported`` (not claimed).
"""

from __future__ import annotations

import functools
import glob
import os
import re
import time
import traceback
import unittest
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

#: All kinds of the suite, in the order onnx's runner registers them.
ALL_KINDS: tuple[str, ...] = ("node", "real", "simple", "pytorch-converted", "pytorch-operator")

#: Statuses a :class:`Result` can carry.
STATUSES: tuple[str, ...] = ("pass", "fail", "error", "unsupported")

_LIGHT_URL_PREFIX = "onnx/backend/test/data/light/"


# --------------------------------------------------------------------------- #
# Cases
# --------------------------------------------------------------------------- #


@dataclass(eq=False)
class SuiteCase:
    """One test case of the suite.

    ``model``, ``data_sets`` and ``op_types`` are computed on first access
    and cached (on-disk models are only read then).

    Attributes:
        name: onnx's test name, e.g. ``"test_abs"`` (no ``_cpu`` suffix).
        kind: one of :data:`ALL_KINDS`.
        rtol, atol: tolerances for ``np.testing.assert_allclose``.
        source: the ``onnx.backend.test.case.test_case.TestCase`` it wraps.
    """

    name: str
    kind: str
    rtol: float
    atol: float
    source: Any = field(repr=False)

    # ---- where the model comes from -------------------------------------

    @property
    def model_path(self) -> str | None:
        """Path of the ``.onnx`` file, or None for in-memory node cases."""
        src = self.source
        if src.model is not None:
            return None
        if src.model_dir is not None:
            return os.path.join(src.model_dir, "model.onnx")
        if src.url is not None and src.url.startswith(_LIGHT_URL_PREFIX):
            # The runner resolves the url relative to the folder that holds
            # the onnx package (site-packages), i.e. <onnx>/backend/test/data/light.
            root = os.path.dirname(os.path.dirname(os.path.abspath(onnx.__file__)))
            return os.path.normpath(os.path.join(root, src.url))
        return None

    @functools.cached_property
    def model(self) -> onnx.ModelProto:
        """The ModelProto (loaded lazily for on-disk cases)."""
        if self.source.model is not None:
            return self.source.model
        path = self.model_path
        if path is None:
            raise FileNotFoundError(
                f"{self.name}: model must be downloaded from {self.source.url!r}; "
                "only the local 'light' models are supported"
            )
        if not os.path.exists(path):
            raise FileNotFoundError(f"{self.name}: model file {path!r} is missing")
        return onnx.load(path)

    # ---- data --------------------------------------------------------------

    @functools.cached_property
    def data_sets(self) -> list[tuple[list[Any], list[Any]]]:
        """List of ``(inputs, expected_outputs)`` pairs.

        Tensors are numpy arrays; a sequence is a list of arrays; an optional
        is its content or None.  Order follows the graph inputs/outputs.
        """
        src = self.source
        if src.model is not None:  # node case generated in memory
            assert src.data_sets is not None
            return [
                ([_normalize(x) for x in inputs], [_normalize(y) for y in outputs])
                for inputs, outputs in src.data_sets
            ]
        if src.model_dir is not None:
            return _load_data_dirs(src.model_dir, self.model)
        if self.model_path is not None:
            return [_light_data_set(self.model_path, self.model)]
        raise FileNotFoundError(f"{self.name}: no local data (url {src.url!r})")

    # ---- model facts ---------------------------------------------------------

    @functools.cached_property
    def op_types(self) -> frozenset[tuple[str, str]]:
        """``(domain, op_type)`` of every node, subgraphs included.

        The default domain is written ``""`` (``"ai.onnx"`` is folded into
        it).  Calls to model-local functions are replaced by the ops of their
        bodies (what a backend must implement once the functions are inlined).
        """
        return frozenset(model_op_types(self.model))

    @property
    def opset(self) -> int | None:
        """Version of the default (``ai.onnx``) domain the model imports."""
        for imp in self.model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return imp.version
        return None

    def release(self) -> None:
        """Drop the cached model/data (useful when iterating over many cases)."""
        for attr in ("model", "data_sets", "op_types"):
            self.__dict__.pop(attr, None)


def iter_cases(
    kinds: Sequence[str] = ALL_KINDS,
    include: str | None = None,
) -> Iterator[SuiteCase]:
    """Yield the suite's cases, kind by kind, sorted by name within a kind.

    Args:
        kinds: subset of :data:`ALL_KINDS`.
        include: optional regex; a case is kept when ``re.search`` matches its
            name (``test_abs``) or its name with onnx's device suffix
            (``test_abs_cpu``), so ``BackendTest.include`` patterns work too.
    """
    from onnx.backend.test.loader import load_model_tests

    pattern = re.compile(include) if include else None
    for kind in kinds:
        if kind not in ALL_KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {ALL_KINDS}")
        for tc in sorted(load_model_tests(kind=kind), key=lambda t: t.name):
            if pattern and not (pattern.search(tc.name) or pattern.search(tc.name + "_cpu")):
                continue
            yield SuiteCase(name=tc.name, kind=kind, rtol=tc.rtol, atol=tc.atol, source=tc)


def model_op_types(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """``(domain, op_type)`` used by ``model``, through subgraphs and local functions."""
    functions = {(f.domain, f.name): f for f in model.functions}
    found: set[tuple[str, str]] = set()
    expanded: set[tuple[str, str]] = set()

    def visit(nodes: Sequence[onnx.NodeProto]) -> None:
        for node in nodes:
            key = (_domain(node.domain), node.op_type)
            if (node.domain, node.op_type) in functions:
                if key not in expanded:
                    expanded.add(key)
                    visit(functions[(node.domain, node.op_type)].node)
            else:
                found.add(key)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g.node)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit(g.node)

    visit(model.graph.node)
    return found


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


# --------------------------------------------------------------------------- #
# Data loading (mirrors onnx.backend.test.runner.Runner)
# --------------------------------------------------------------------------- #


def _normalize(value: Any) -> Any:
    """TensorProto -> ndarray, numpy scalar -> 0-d array, torch tensor -> ndarray; lists recursively."""
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


def _load_pb(path: str, type_proto: onnx.TypeProto) -> Any:
    """Parse one ``.pb`` file the way ``Runner._load_proto`` does."""
    with open(path, "rb") as f:
        content = f.read()
    which = type_proto.WhichOneof("value")
    if which == "sequence_type":
        seq = onnx.SequenceProto()
        seq.ParseFromString(content)
        return numpy_helper.to_list(seq)
    if which == "optional_type":
        opt = onnx.OptionalProto()
        opt.ParseFromString(content)
        return numpy_helper.to_optional(opt)
    if which == "tensor_type":
        tensor = onnx.TensorProto()
        tensor.ParseFromString(content)
        return numpy_helper.to_array(tensor)
    raise NotImplementedError(f"cannot load {path}: values of type {which!r} are not supported")


def _load_data_dirs(model_dir: str, model: onnx.ModelProto) -> list[tuple[list[Any], list[Any]]]:
    """``test_data_set_*/input_<i>.pb`` / ``output_<i>.pb`` of an on-disk case."""
    data_sets = []
    for data_dir in sorted(glob.glob(os.path.join(model_dir, "test_data_set*"))):
        n_in = len(glob.glob(os.path.join(data_dir, "input_*.pb")))
        n_out = len(glob.glob(os.path.join(data_dir, "output_*.pb")))
        inputs = [
            _load_pb(os.path.join(data_dir, f"input_{i}.pb"), model.graph.input[i].type)
            for i in range(n_in)
        ]
        outputs = [
            _load_pb(os.path.join(data_dir, f"output_{i}.pb"), model.graph.output[i].type)
            for i in range(n_out)
        ]
        data_sets.append((inputs, outputs))
    return data_sets


def dummy_input(value_info: onnx.ValueInfoProto) -> np.ndarray:
    """Deterministic input of ``Runner.generate_dummy_data(random=False)``.

    Float32 only; dims without a value are set to 1; values are
    ``arange(n) / n``.
    """
    tt = value_info.type.tensor_type
    if tt.elem_type != onnx.TensorProto.FLOAT:
        raise NotImplementedError(f"dummy data only for float inputs, not for {value_info.name!r}")
    shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim)
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def _light_data_set(model_path: str, model: onnx.ModelProto) -> tuple[list[Any], list[Any]]:
    """Inputs/expected outputs of a ``real`` case backed by a ``light_*.onnx`` model."""
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [x for x in model.graph.input if x.name not in initializers]
    inputs = [dummy_input(x) for x in graph_inputs]

    prefix = os.path.splitext(model_path)[0]
    paths = [f"{prefix}_output_{i}.pb" for i in range(len(model.graph.output))]
    if all(os.path.exists(p) for p in paths):
        outputs = [_load_pb(p, o.type) for p, o in zip(paths, model.graph.output)]
    else:  # what the runner does when the stored outputs are missing
        import onnx.reference

        feeds = {x.name: v for x, v in zip(graph_inputs, inputs)}
        outputs = list(onnx.reference.ReferenceEvaluator(model).run(None, feeds))
    return inputs, outputs


# --------------------------------------------------------------------------- #
# Comparison (mirrors Runner.assert_similar_outputs)
# --------------------------------------------------------------------------- #


def assert_similar_outputs(
    expected: Sequence[Any], actual: Sequence[Any], rtol: float, atol: float, where: str = "output"
) -> None:
    """Raise AssertionError unless ``actual`` matches ``expected``.

    Same checks as onnx's runner: output count, then per output shape, dtype
    and ``assert_allclose`` (exact equality for strings/objects; bfloat16 in
    float32 with rtol >= 2**-6).  Sequences are compared element by element;
    an empty optional (None) must be matched by None.
    """
    if len(actual) != len(expected):
        raise AssertionError(f"{where}: expected {len(expected)} outputs, got {len(actual)}")
    for i, (ref, out) in enumerate(zip(expected, actual)):
        label = f"{where}[{i}]"
        if ref is None or out is None:
            if not (ref is None and out is None):
                raise AssertionError(f"{label}: expected {_describe(ref)}, got {_describe(out)}")
            continue
        if isinstance(ref, (list, tuple)) or isinstance(out, (list, tuple)):
            if not (isinstance(ref, (list, tuple)) and isinstance(out, (list, tuple))):
                raise AssertionError(f"{label}: expected {_describe(ref)}, got {_describe(out)}")
            assert_similar_outputs(ref, out, rtol, atol, where=label)
            continue
        _assert_tensor_close(np.asarray(ref), out, rtol, atol, label)


def _assert_tensor_close(ref: np.ndarray, out: Any, rtol: float, atol: float, label: str) -> None:
    if not hasattr(out, "shape") or not hasattr(out, "dtype"):
        raise AssertionError(f"{label}: expected an array, got {type(out).__name__}")
    if tuple(out.shape) != tuple(ref.shape):
        raise AssertionError(f"{label}: incorrect shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
    try:
        if ref.dtype == object:  # strings
            np.testing.assert_array_equal(out, ref, err_msg=label)
            return
        if out.dtype != ref.dtype:
            raise AssertionError(f"{label}: incorrect dtype {out.dtype}, expected {ref.dtype}")
        if out.dtype.name == "bfloat16":
            rtol = max(rtol, 2**-6)  # two bfloat16 ULPs, as the runner does
            out, ref = out.astype(np.float32), ref.astype(np.float32)
        np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol, err_msg=label)
    except AssertionError as exc:
        if str(exc).startswith(label):
            raise
        raise AssertionError(_mismatch_summary(label, str(exc)) + "\n" + str(exc).strip()) from None


def _mismatch_summary(label: str, numpy_message: str) -> str:
    """One line out of numpy's assert_allclose message (for failure tables)."""
    parts = []
    for line in numpy_message.splitlines():
        line = line.strip()
        if line.startswith(("Mismatched elements:", "Max absolute difference", "Max relative difference")):
            parts.append(line.replace(" among violations", ""))
        elif "mismatch" in line and line.endswith("mismatch:"):  # "nan/inf location mismatch:"
            parts.append(line.rstrip(":"))
    return f"{label}: values differ" + (f" ({'; '.join(parts)})" if parts else "")


def _describe(value: Any) -> str:
    if value is None:
        return "None (empty optional)"
    if isinstance(value, (list, tuple)):
        return f"a sequence of {len(value)}"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------- #
# Running
# --------------------------------------------------------------------------- #


@dataclass
class Result:
    """Outcome of :func:`run_case`.

    Attributes:
        status: ``"pass" | "fail" | "error" | "unsupported"``.
        message: empty on pass; otherwise the reason (an exception's type and
            text; for errors, the traceback's last frames follow).
        seconds: wall time of claimed() + prepare() + run() + comparison
            (loading the case's model and data is not counted).
    """

    status: str
    message: str
    seconds: float

    @property
    def claimed(self) -> bool:
        """True unless the backend declined the case."""
        return self.status != "unsupported"

    @property
    def first_line(self) -> str:
        """First non-empty line of the message (for tables)."""
        for line in self.message.splitlines():
            if line.strip():
                return line.strip()
        return ""


def unsupported_exceptions(backend_cls: Any) -> tuple[type[BaseException], ...]:
    """Exception types meaning "not supported": ``backend_cls.Unsupported`` and SkipTest."""
    declared = getattr(backend_cls, "Unsupported", ())
    if isinstance(declared, type):
        declared = (declared,)
    return (unittest.SkipTest, *tuple(declared))


def is_claimed(backend_cls: Any, model: onnx.ModelProto) -> bool:
    """``backend_cls.claimed(model)`` when the backend defines it, else True."""
    claimed = getattr(backend_cls, "claimed", None)
    return True if claimed is None else bool(claimed(model))


def run_case(backend_cls: Any, case: SuiteCase, device: str = "CPU") -> Result:
    """Run one case on ``backend_cls`` (a Backend subclass, used through classmethods).

    Never raises (except KeyboardInterrupt/SystemExit): every exception ends
    up in the returned :class:`Result`.
    """
    # Data loading problems are the harness's/suite's, not the backend's.
    try:
        model = case.model
        data_sets = case.data_sets
    except Exception as exc:  # noqa: BLE001
        return Result("error", f"cannot load case: {_exc_text(exc)}", 0.0)

    start = time.perf_counter()

    def done(status: str, message: str = "") -> Result:
        return Result(status, message, time.perf_counter() - start)

    unsupported = unsupported_exceptions(backend_cls)
    try:
        if not is_claimed(backend_cls, model):
            return done("unsupported", _unclaimed_message(backend_cls, model))
        rep = backend_cls.prepare(model, device)
        for k, (inputs, expected) in enumerate(data_sets):
            outputs = rep.run(inputs)
            outputs = [_normalize(o) for o in (outputs.values() if isinstance(outputs, dict) else outputs)]
            where = "output" if len(data_sets) == 1 else f"data_set[{k}].output"
            try:
                assert_similar_outputs(expected, outputs, case.rtol, case.atol, where=where)
            except AssertionError as exc:
                return done("fail", str(exc).strip() or "outputs differ")
    except unsupported as exc:
        return done("unsupported", _exc_text(exc))
    except Exception as exc:  # noqa: BLE001
        return done("error", _exc_text(exc) + "\n" + _short_traceback(exc))
    return done("pass")


def _unclaimed_message(backend_cls: Any, model: onnx.ModelProto) -> str:
    explain = getattr(backend_cls, "unclaimed_ops", None)
    if explain is None:
        return "not claimed by backend"
    try:
        ops = sorted(explain(model))
    except Exception:  # noqa: BLE001 - the explanation is best effort
        return "not claimed by backend"
    return "not claimed by backend: " + ", ".join(ops) if ops else "not claimed by backend"


def _exc_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _short_traceback(exc: BaseException, frames: int = 3) -> str:
    return "".join(traceback.format_tb(exc.__traceback__)[-frames:])


def summarize(results: Sequence[tuple[SuiteCase, Result]]) -> dict[str, int]:
    """Counts: total, claimed, pass, fail, error, unsupported, failed_claimed."""
    counts = {"total": len(results), **{s: 0 for s in STATUSES}}
    for _, res in results:
        counts[res.status] += 1
    counts["claimed"] = counts["total"] - counts["unsupported"]
    counts["failed_claimed"] = counts["fail"] + counts["error"]
    return counts


def light_model_paths() -> list[str]:
    """Paths of the ``light_*.onnx`` models behind the ``real`` cases."""
    here = os.path.dirname(os.path.abspath(onnx.__file__))
    return sorted(glob.glob(os.path.join(here, "backend", "test", "data", "light", "light_*.onnx")))

