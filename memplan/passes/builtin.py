"""Imports every built-in pass module, so that each registers itself (:mod:`memplan.passes.registry`)."""
from memplan.passes import (allocate, attention, canonicalize, fold_batchnorm, fold_constants,  # noqa: F401
                            fusion, inplace, legalize, lower_conv, mkldnn_conv, schedule, verify, verify_plan)
