"""The PyTorch backend's kernel table: which kernel writes a node's results into buffers it is given.

An op whose results can be written into given buffers (aten's ``out=`` overloads, found from the
op's schema, and memplan's own ``out=`` kernels where aten's computes a temporary and copies it)
can have its outputs planned in a slot of a storage; any other op allocates its result itself, and
the planner makes that result kernel-owned. This is a backend's knowledge, not the IR's: another
backend (Triton) has another table.
"""
from __future__ import annotations

from memplan.ir.ops import _CUSTOM, MASKED_OUTPUTS, lookup, resolve_aten


def out_variant(name: str) -> tuple[str, list[str]] | None:
    """The ``out=`` overload of aten op ``name`` and its out-argument names, or None.

    ``aten.addmm.default -> ('aten.addmm.out', ['out'])``;
    ``aten.native_layer_norm.default -> ('aten.native_layer_norm.out', ['out0', 'out1', 'out2'])``.
    With it, an op writes straight into a planned slot of the arena.
    """
    if name in _OUT_CACHE:
        return _OUT_CACHE[name]
    result = None
    if name in _OUT_OVERRIDES:
        result = (f"{_OUT_OVERRIDES[name]}.out", list(_CUSTOM[_OUT_OVERRIDES[name]].out_args))
    elif name in _CUSTOM and _CUSTOM[name].out_args:
        result = (f"{name}.out", list(_CUSTOM[name].out_args))
    elif name.startswith("aten.") and not lookup(name).view and name not in MASKED_OUTPUTS and name not in _NO_OUT:
        from torch._library._out_variant import get_out_arg_names, to_out_variant
        try:
            out_op = to_out_variant(resolve_aten(name))
        except RuntimeError:  # not a functional schema
            out_op = None
        if out_op is not None:
            result = (f"aten.{out_op._schema.name.split('::')[1]}.{out_op._overloadname}",
                      list(get_out_arg_names(out_op)))
    _OUT_CACHE[name] = result
    return result


_OUT_CACHE: dict[str, tuple[str, list[str]] | None] = {}
# aten ops whose own out= form computes a temporary and copies it: memplan's writes in place
_OUT_OVERRIDES = {"aten.constant_pad_nd.default": "memplan.constant_pad_nd",
                  "aten.max_pool2d.default": "memplan.max_pool2d",
                  "aten.clone.default": "memplan.clone",
                  "aten.embedding.default": "memplan.embedding",
                  "aten._native_batch_norm_legit_no_training.default": "memplan.batch_norm_inference"}


# aten ops whose out= form computes the whole result apart and copies it (a result's worth of
# scratch) and that memplan has no kernel of its own for: they allocate their results
_NO_OUT = frozenset({"aten.embedding_dense_backward.default"})


def resolve_out(out_name: str):
    """The callable of an ``out=`` overload named by :func:`out_variant`."""
    if out_name.startswith("memplan.") and out_name.endswith(".out"):
        return _CUSTOM[out_name[: -len(".out")]].impl.out
    return resolve_aten(out_name)
