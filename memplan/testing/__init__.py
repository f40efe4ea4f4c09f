"""Testing tools that drive memplan through its public API (:func:`memplan.compile`).

They sit above the package face: nothing in ``memplan`` imports them, and they
may import ``memplan`` itself. :mod:`memplan.testing.onnx_backend` is memplan
as an ONNX backend (``onnx.backend.base.Backend``), for the ONNX conformance
suite.
"""
