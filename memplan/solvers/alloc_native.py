"""The compiled exact search: MiniMalloc's algorithm in C++, loaded through ``ctypes``.

The kernel (``memplan/solvers/native/minimalloc.cpp``) decides "do these
buffers fit within capacity C?" with MiniMalloc's branch and bound (Moffitt,
ASPLOS 2023): canonical packings only, dynamic ordering, dominance, section
inference with unallocated floors and a monotonic floor, hatless pruning,
dynamic temporal decomposition, and the WAT / TAW / TWA preorders tried round
robin with doubling node limits. It has a plain C ABI (no Python C-API), so
it is an ordinary shared object:

1. ``pip install`` (editable or not) builds it as ``memplan/solvers/_minimalloc*.so``
   (``setup.py``); that file is used when present and not older than the source;
2. otherwise (a source checkout never installed) it is compiled on first use
   with the system C++ compiler (``$CXX``, ``c++`` or ``g++``) into
   ``$MEMPLAN_CACHE_DIR`` or ``~/.cache/memplan/native/``, keyed by a hash of
   the source, and reused from there;
3. without a compiler, :func:`native_available` is False (with the reason in
   :func:`native_status`) and the callers keep the pure-Python search of
   :mod:`memplan.solvers.alloc_search`, logging why once.

``MEMPLAN_NATIVE=0`` turns the kernel off (for comparisons and tests).

:func:`native_search` is one decision; :func:`native_minimize` lowers a
height by repeated decisions (and turns of the repair search), with the same
result type as :func:`memplan.solvers.alloc_search.minimize_height`.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.machinery
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memplan.solvers.alloc_instance import PackingInstance
from memplan.solvers.alloc_search import (FOUND, INFEASIBLE, NODE_LIMIT, TIMEOUT, MinimizeOutcome,
                                          next_step, take_turns_with_repair)

log = logging.getLogger("memplan.solvers.native")

ABI_VERSION = 1
HERE = Path(__file__).resolve().parent
SOURCE = HERE / "native" / "minimalloc.cpp"
LIBRARY_STEM = "_minimalloc"                       # the extension setup.py builds: memplan.solvers._minimalloc
HEURISTICS = ("WAT", "TAW", "TWA")                 # MiniMalloc's default static preorders
MAX_TOTAL = 2**62                                  # sum(sizes) + n * alignment must stay below this
COMPILE_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread"]
_STATUS = {0: FOUND, 1: INFEASIBLE, 2: TIMEOUT, 3: NODE_LIMIT}

# bits of the kernel's `disable` mask (MiniMalloc's ablation switches)
DISABLE = {"canonical_only": 1 << 0, "section_inference": 1 << 1, "dynamic_ordering": 1 << 2,
           "check_dominance": 1 << 3, "unallocated_floor": 1 << 4, "static_preordering": 1 << 5,
           "dynamic_decomposition": 1 << 6, "monotonic_floor": 1 << 7, "hatless_pruning": 1 << 8}

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_status: str | None = None                         # where the kernel came from, or why there is none
_warned = False


@dataclass
class NativeOutcome:
    """One decision: ``status`` is found / infeasible / timeout / node-limit."""

    status: str
    offsets: list[int] | None
    backtracks: int
    nodes: int
    seconds: float


def _installed_library() -> Path | None:
    """The shared object ``pip install`` built next to this module, if any."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = HERE / f"{LIBRARY_STEM}{suffix}"
        if path.is_file():
            return path
    return None


def _cache_dir() -> Path:
    root = os.environ.get("MEMPLAN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "memplan")
    return Path(root) / "native"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compile_into_cache(rebuild: bool = False) -> Path:
    """Compile the kernel with the system compiler into the cache folder (once per source version;
    ``rebuild``: again, over a cached file that would not load)."""
    if not SOURCE.is_file():
        raise OSError(f"kernel source {SOURCE} is missing")
    compiler = _compiler()
    if compiler is None:
        raise OSError("no C++ compiler found ($CXX, c++, g++, clang++)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler] + COMPILE_FLAGS).encode()).hexdigest()[:16]
    target = _cache_dir() / f"libmemplan_minimalloc-{key}.so"
    if target.is_file() and not rebuild:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        started = time.monotonic()
        run = subprocess.run([compiler, *COMPILE_FLAGS, "-o", tmp, str(SOURCE)], capture_output=True,
                             text=True, timeout=300)
        if run.returncode != 0:
            raise OSError(f"{Path(compiler).name} failed: {(run.stderr or run.stdout).strip()[:300]}")
        os.replace(tmp, target)             # atomic: a concurrent process sees the whole file or none
        log.info("compiled the exact allocation kernel into %s (%.1f s)", target, time.monotonic() - started)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.memplan_mm_abi_version.restype = ctypes.c_int
    lib.memplan_mm_abi_version.argtypes = []
    if lib.memplan_mm_abi_version() != ABI_VERSION:
        raise OSError(f"{path} has ABI version {lib.memplan_mm_abi_version()}, expected {ABI_VERSION}")
    p64 = ctypes.POINTER(ctypes.c_int64)
    lib.memplan_mm_solve.restype = ctypes.c_int
    lib.memplan_mm_solve.argtypes = [ctypes.c_int64, p64, p64, p64, ctypes.c_int64, ctypes.c_int64,
                                     ctypes.c_double, ctypes.c_int64, ctypes.c_char_p, ctypes.c_uint32,
                                     p64, p64]
    return lib


def load() -> ctypes.CDLL | None:
    """The kernel (built by the install, else compiled into the cache), or None with a logged reason."""
    global _library, _status, _warned
    with _lock:
        if _status is not None:
            return _library
        if os.environ.get("MEMPLAN_NATIVE", "1").strip().lower() in ("0", "no", "off", "false"):
            _status = "turned off by MEMPLAN_NATIVE=0"
            return None
        errors = []
        installed = _installed_library()
        if installed is not None and SOURCE.is_file() and SOURCE.stat().st_mtime > installed.stat().st_mtime:
            errors.append(f"{installed.name} is older than {SOURCE.name}")   # an edited source: rebuild
            installed = None
        if installed is not None:
            try:
                _library, _status = _bind(installed), f"native ({installed.name})"
                return _library
            except (OSError, AttributeError) as exc:  # not loadable, or not this kernel (no ABI symbol)
                errors.append(f"{installed.name}: {exc}")
        try:
            path = _compile_into_cache()
            try:
                _library = _bind(path)
            except (OSError, AttributeError) as exc:  # a corrupt or foreign cached file: build it once more
                errors.append(f"{path.name}: {exc}")
                path = _compile_into_cache(rebuild=True)
                _library = _bind(path)
            _status = f"native (compiled into {path.parent})"
        except (OSError, AttributeError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
            _status = "no native kernel: " + "; ".join(errors)
            if not _warned:
                _warned = True
                log.warning("exact allocation falls back to the pure-Python search (%s)", _status)
        return _library


def native_available() -> bool:
    """Whether the compiled kernel can be used (loads or compiles it on the first call)."""
    return load() is not None


def native_status() -> str:
    """Where the kernel came from, or why it is not used."""
    load()
    return _status or ""


def native_fits(instance: PackingInstance, capacity: int | None = None) -> str | None:
    """Why the kernel cannot take ``instance`` (its numbers are int64), or None if it can."""
    total = sum(instance.sizes) + len(instance) * max(instance.alignment, 1)
    if total >= MAX_TOTAL:
        return "total size near 2**62 bytes, beyond the kernel's int64 arithmetic"
    return None


def native_search(instance: PackingInstance, capacity: int, time_limit: float,
                  heuristics: tuple[str, ...] | list[str] = HEURISTICS, max_nodes: int = 0,
                  disable: int = 0) -> NativeOutcome:
    """Decide whether ``instance`` packs within ``capacity`` in at most ``time_limit`` seconds.

    ``found`` comes with offsets (a multiple of the alignment each, within the
    capacity, live buffers disjoint); ``infeasible`` is a proof; ``timeout``
    and ``node-limit`` (``max_nodes`` > 0) say the search gave up first.
    ``heuristics`` are the static preorders tried round robin (letters W, A,
    T, L, U, O, C, Z; see the kernel), ``disable`` a mask of :data:`DISABLE`
    bits. Raises ``RuntimeError`` if the kernel is unavailable.
    """
    lib = load()
    if lib is None:
        raise RuntimeError(f"the native allocation kernel is unavailable ({_status})")
    why = native_fits(instance, capacity)
    if why:
        raise ValueError(why)
    if disable & DISABLE["dynamic_ordering"]:
        # hatless pruning stops at the first candidate with nothing above it, which is sound only when
        # candidates come in offset order: the dynamic ordering's
        disable |= DISABLE["hatless_pruning"]
    n = len(instance)
    capacity = min(int(capacity), MAX_TOTAL)   # beyond the total size every capacity is the same
    if n == 0:
        return NativeOutcome(FOUND, [], 0, 0, 0.0)
    lower = np.ascontiguousarray(instance.lowers, dtype=np.int64)
    upper = np.ascontiguousarray(instance.uppers, dtype=np.int64)
    size = np.ascontiguousarray(instance.sizes, dtype=np.int64)
    offsets = np.zeros(n, dtype=np.int64)
    stats = np.zeros(2, dtype=np.int64)
    p64 = ctypes.POINTER(ctypes.c_int64)
    started = time.monotonic()
    code = lib.memplan_mm_solve(n, lower.ctypes.data_as(p64), upper.ctypes.data_as(p64),
                                size.ctypes.data_as(p64), int(instance.alignment), capacity,
                                max(float(time_limit), 0.0), int(max_nodes), ",".join(heuristics).encode(),
                                int(disable), offsets.ctypes.data_as(p64), stats.ctypes.data_as(p64))
    seconds = time.monotonic() - started
    if code not in _STATUS:
        raise RuntimeError(f"native allocation kernel failed (code {code})")
    status = _STATUS[code]
    return NativeOutcome(status, offsets.tolist() if status == FOUND else None, int(stats[0]), int(stats[1]),
                         seconds)


NATIVE_FIRST = 0.15         # share of the time the native descent gets before the repair search is tried


def native_minimize(instance: PackingInstance, incumbent: list[int], lower_bound: int, stop_at: int,
                    deadline: float, fixed_capacity: bool = False, seed: int = 0) -> MinimizeOutcome:
    """:func:`~memplan.solvers.alloc_search.minimize_height` with the compiled kernel as its search.

    With ``fixed_capacity``, the kernel decides ``stop_at`` with all the time
    left. Otherwise a descent (:class:`_NativeDescent`) lowers the height by
    decisions at capacities between the proven bound and the best height;
    it gets 15% of the time, then the TelaMalloc-style repair search gets a
    probe turn, and if that packs lower the two take turns to the end (as in
    ``minimize_height``), else the descent has the rest of the time.
    """
    outcome = MinimizeOutcome(list(incumbent), instance.height(incumbent), lower_bound, False)
    start = time.monotonic()
    descent = _NativeDescent(instance, outcome, stop_at, fixed_capacity)
    # the kernel first; where it has not finished, the repair search gets turns (with a capacity too: on
    # aligned instances, whose sections the kernel bounds by raw sizes, the repair often fits first)
    descent.run(start + NATIVE_FIRST * (deadline - start))
    if not descent.finished() and time.monotonic() < deadline and instance.build_conflicts(deadline):
        take_turns_with_repair(instance, descent, outcome, stop_at, start, deadline, seed, fixed_capacity)
    descent.run(deadline)
    outcome.improved = outcome.height < instance.height(incumbent)
    return outcome


class _NativeDescent:
    """Decisions at capacities below the best height, resumable (it shares ``outcome``).

    The policy of :class:`memplan.solvers.alloc_search._Descent`, with node
    limits instead of time slices (the kernel sets up in microseconds):

    - first one dive per preorder at ``height - 1`` (lowest offset first,
      itself a good heuristic);
    - then rounds of an *exact* attempt at the proven bound, each preorder in
      turn, with a node limit doubling every round (this is what solves tight
      instances, whose optimum is the bound), and six *descent* steps at
      ``height - step`` with a small node limit; the step doubles after a
      packing and halves after a give-up.

    A proof of infeasibility at a capacity raises the proven bound. With
    ``fixed_capacity`` it is one decision at ``stop_at`` with MiniMalloc's
    round robin and all the time left.
    """

    def __init__(self, instance: PackingInstance, outcome: MinimizeOutcome, stop_at: int, fixed_capacity: bool):
        self.instance, self.outcome = instance, outcome
        self.stop_at, self.fixed_capacity = stop_at, fixed_capacity
        n = len(instance)
        self.exact_limit = self.descent_limit = 2 * n + 64
        self.step = max((outcome.height - outcome.proven_lower) // 32, 1)
        self.dives = list(HEURISTICS)

    def finished(self) -> bool:
        outcome = self.outcome
        return (outcome.height <= max(outcome.proven_lower, self.stop_at)
                or (self.fixed_capacity and outcome.proven_lower > self.stop_at))

    def run(self, until: float) -> None:
        outcome, n = self.outcome, len(self.instance)
        if self.fixed_capacity:
            while not self.finished() and time.monotonic() < until:
                if self._decide(self.stop_at, HEURISTICS, 0, until) == TIMEOUT:
                    return
            return
        while self.dives and not self.finished() and time.monotonic() < until:
            if self._decide(outcome.height - 1, (self.dives[0],), n + 1, until) == TIMEOUT:
                return
            self.dives.pop(0)
        while not self.finished() and time.monotonic() < until:
            status = self._attempt(max(outcome.proven_lower, self.stop_at), self.exact_limit, until)
            if status == TIMEOUT:
                return
            self.exact_limit *= 2
            for _ in range(6):
                if self.finished() or time.monotonic() >= until:
                    return
                target = max(outcome.proven_lower, self.stop_at, outcome.height - self.step)
                status = self._attempt(target, self.descent_limit, until)
                if status == TIMEOUT:
                    return
                self.step, self.descent_limit = next_step(status, self.step, self.descent_limit)

    def _attempt(self, capacity: int, node_limit: int, until: float) -> str:
        """One decision per preorder at ``capacity`` until one packs or proves there is no packing."""
        status = NODE_LIMIT
        for heuristic in HEURISTICS:
            status = self._decide(capacity, (heuristic,), node_limit, until)
            if status != NODE_LIMIT:
                return status
        return status

    def _decide(self, capacity: int, heuristics: tuple[str, ...], node_limit: int, until: float) -> str:
        outcome = self.outcome
        run = native_search(self.instance, capacity, max(until - time.monotonic(), 0.0), heuristics=heuristics,
                            max_nodes=node_limit)
        outcome.nodes += run.nodes
        what = f"native search[{','.join(heuristics)}]"
        if run.status == FOUND:
            height = self.instance.height(run.offsets)
            if height < outcome.height:
                outcome.offsets, outcome.height = run.offsets, height
                outcome.log.append(f"{what} packed in {height} <= {capacity} "
                                   f"({run.backtracks} backtracks, {run.seconds:.2f} s)")
        elif run.status == INFEASIBLE:
            if capacity + 1 > outcome.proven_lower:
                outcome.proven_lower = capacity + 1
                outcome.log.append(f"{what} proved {capacity} infeasible "
                                   f"({run.backtracks} backtracks, {run.seconds:.2f} s)")
        return run.status
