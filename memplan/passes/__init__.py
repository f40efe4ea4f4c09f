"""Passes, registered by name (see :mod:`memplan.passes.manager`)."""
from memplan.passes import allocate, canonicalize, fold_batchnorm, inplace, lower_conv, mkldnn_conv, schedule, verify, verify_plan  # noqa: F401  (registration)
from memplan.passes.manager import DEFAULT_PIPELINE, PASSES, PassContext, register_pass, run_pipeline

__all__ = ["DEFAULT_PIPELINE", "PASSES", "PassContext", "register_pass", "run_pipeline"]
