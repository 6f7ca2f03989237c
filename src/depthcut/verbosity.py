"""What a user sees on stderr: depthcut's progress bars, results and its own warnings only.

By default the libraries depthcut drives are kept quiet (transformers' info logs and weight
loading bars, accelerate / peft / lm-eval / torch logs, their deprecation warnings, failed
optional-kernel loads). ``--verbose`` (or ``verbose=True``) lets all of it through.
"""

from __future__ import annotations

import logging
import os
import warnings

LIBRARIES = ("transformers", "torch", "accelerate", "peft", "lm_eval", "torchao", "datasets")
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def configure(verbose: bool = False) -> None:
    """Quiet libraries (the default) or let every library log and warning through."""
    if verbose:
        for key in QUIET_ENV:
            os.environ.pop(key, None)
        os.environ["TRANSFORMERS_VERBOSITY"] = "info"
        logging.basicConfig(level=logging.INFO)
        warnings.resetwarnings()
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"depthcut(\.|$)")
