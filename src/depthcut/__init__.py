"""depthcut: structured depth/width pruning that really shrinks tensors.

Public API (heavy modules are imported lazily so that ``import depthcut`` stays fast)::

    import depthcut as dc
    model, tok = dc.load_model("smollm2-135m")
    calib = dc.calibration(tok, "wiki", n_samples=16, seq_len=256)
    cfg = dc.PruneConfig(budget=dc.Budget(params=0.25))  # the recommended method
    scores = dc.score(model, cfg, calib)
    plan = dc.plan(scores, cfg)
    pruned = dc.apply(model, plan, calib)  # with its repair (the ls refit)
    dc.save(pruned, plan, "out/smollm2-25", tok)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from depthcut.version import __version__ as __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each loads on first use
    from depthcut.api import apply, fine_units, frontier, plan, plan_units, prune, repair, score
    from depthcut.config import Budget, PruneConfig
    from depthcut.data import calibration
    from depthcut.errors import DepthcutError
    from depthcut.formats.run import export_run as export
    from depthcut.formats.runtime import LlamaCpp
    from depthcut.io import load, save
    from depthcut.methods.fine.cnn import cnn_plan
    from depthcut.models import load_model
    from depthcut.planning.plan import Plan
    from depthcut.quantization import QuantizeConfig, quantize
    from depthcut.recipe import Recipe
    from depthcut.recovery.config import RecoverConfig
    from depthcut.recovery.run import recover
    from depthcut.scores import Scores
    from depthcut.search.budgets import Budgets

_EXPORTS = {
    "Budget": "depthcut.config",
    "PruneConfig": "depthcut.config",
    "Plan": "depthcut.planning.plan",
    "Scores": "depthcut.scores",
    "score": "depthcut.api",
    "plan": "depthcut.api",
    "apply": "depthcut.api",
    "prune": "depthcut.api",
    "repair": "depthcut.api",
    "plan_units": "depthcut.api",
    "fine_units": "depthcut.api",
    "frontier": "depthcut.api",
    "Budgets": "depthcut.search.budgets",
    "cnn_plan": "depthcut.methods.fine.cnn",
    "save": "depthcut.io",
    "load": "depthcut.io",
    "load_model": "depthcut.models",
    "calibration": "depthcut.data",
    "DepthcutError": "depthcut.errors",
    "RecoverConfig": "depthcut.recovery.config",
    "QuantizeConfig": "depthcut.quantization",
    "Recipe": "depthcut.recipe",
    "recover": "depthcut.recovery.run",
    "quantize": "depthcut.quantization",
    "export": "depthcut.formats.run:export_run",
    "LlamaCpp": "depthcut.formats.runtime",
}

__all__ = [
    "Budget",
    "Budgets",
    "DepthcutError",
    "LlamaCpp",
    "Plan",
    "PruneConfig",
    "QuantizeConfig",
    "Recipe",
    "RecoverConfig",
    "Scores",
    "apply",
    "calibration",
    "cnn_plan",
    "export",
    "fine_units",
    "frontier",
    "load",
    "load_model",
    "plan",
    "plan_units",
    "prune",
    "quantize",
    "recover",
    "repair",
    "save",
    "score",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, _, attr = _EXPORTS[name].partition(":")
        return getattr(importlib.import_module(module), attr or name)
    raise AttributeError(f"module 'depthcut' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy exports too, so that ``dir(depthcut)`` and completion list them."""
    return sorted({*globals(), *_EXPORTS})
