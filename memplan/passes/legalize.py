"""Pass ``legalize``: the backend's kernel choice (:meth:`memplan.backends.base.Backend.legalize`).

For the PyTorch backend: 2-D convolutions by oneDNN in channels-last layout (the ``mkldnn_conv``
pass). Another backend chooses its own kernels here; the passes after it plan whatever it chose.
"""
from __future__ import annotations

from memplan.passes.registry import register_pass


@register_pass("legalize", produces=("kernels",), includes=("mkldnn_conv",))
def legalize(graph, ctx):
    """Let the backend choose kernels (PyTorch: oneDNN convolutions, ``mkldnn_conv``)."""
    return ctx.get_backend().legalize(graph, ctx)
