"""Passes, registered by name (see :mod:`memplan.passes.registry`); :func:`run_pipeline` runs them."""
from memplan.passes.manager import run_pipeline
from memplan.passes.registry import DEFAULT_PIPELINE, PASSES, PassContext, register_pass

__all__ = ["DEFAULT_PIPELINE", "PASSES", "PassContext", "register_pass", "run_pipeline"]
