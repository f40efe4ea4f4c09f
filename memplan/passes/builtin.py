"""Imports every built-in pass module, so that each registers itself (:mod:`memplan.passes.registry`)."""
from memplan.passes import (allocate, attention, canonicalize, fold_batchnorm, fusion, inplace, legalize, lower_conv,  # noqa: F401
                            mkldnn_conv, schedule, verify, verify_plan)
