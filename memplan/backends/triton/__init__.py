"""The Triton backend: fused regions, row reductions and attention as Triton kernels, a launcher for the rest.

``memplan.compile(model, inputs, backend="triton")`` plans for it (its kernels need no scratch) and
runs the emitted module; ``memplan lower model.onnx --emit triton -o DIR`` writes the kernels and the
launcher as two files. Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``,
set by the emitted module itself before the kernels are defined).

- :mod:`.codegen`: the kernel record, kernel-local names, dtypes, index arithmetic, block sizes;
- :mod:`.pointwise`: an elementwise ``memplan.loop`` / ``memplan.group`` as one kernel over its
  whole iteration space (the aten -> Triton translation table);
- :mod:`.reductions`: softmax, log-softmax, layer norm, sum and mean over rows (with an elementwise
  prologue computed in registers, for a ``memplan.group`` of :mod:`memplan.passes.reduction_groups`);
- :mod:`.attention`: an attention loop (pass ``attention``) as one FlashAttention kernel;
- :mod:`.kernels`: which nodes become kernels, and the kernel module's text;
- :mod:`.launcher`: the launcher (the PyTorch backend's emitted module, launching kernels) and its loader;
- :mod:`.backend`: :class:`TritonBackend`.
"""
from memplan.backends.triton.backend import TritonBackend
from memplan.backends.triton.launcher import emit_triton, load_triton

__all__ = ["TritonBackend", "emit_triton", "load_triton"]
