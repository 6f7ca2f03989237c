"""Jobs behind the CLI verbs, each a typed config and a function that returns its output
directory; callable from Python without argparse.

>>> from depthcut.jobs import ModelRef, Output, PruneJob, run_prune  # doctest: +SKIP
"""

from depthcut.jobs.common import CalibSpec, ModelRef, Output
from depthcut.jobs.explain import ExplainJob, run_explain
from depthcut.jobs.prune import PruneJob, run_prune
from depthcut.jobs.quantize import QuantizeJob, run_quantize
from depthcut.jobs.recover import RecoverJob, run_recover
from depthcut.jobs.sweep import SweepJob, run_sweep_job

__all__ = [
    "CalibSpec",
    "ExplainJob",
    "ModelRef",
    "Output",
    "PruneJob",
    "QuantizeJob",
    "RecoverJob",
    "SweepJob",
    "run_explain",
    "run_prune",
    "run_quantize",
    "run_recover",
    "run_sweep_job",
]
