"""The one interface every pruning family implements, and what the families share."""

from __future__ import annotations

import json
from typing import Any, Protocol

from torch import nn

from depthcut.config import PruneConfig
from depthcut.data import CalibData
from depthcut.errors import UnsupportedModelError
from depthcut.graph.structure import ModelStructure
from depthcut.planning.plan import Plan
from depthcut.scores import Scores
from depthcut.surgery.patch import patch_params
from depthcut.units.discover import count_params, embedding_params


class Family(Protocol):
    """A pruning family: the unit kinds it owns, and score → select → apply for them.

    ``select`` adds the family's actions (and its run facts) to ``plan``, seeing the actions
    earlier families chose (width pruning skips blocks that depth pruning removes)."""

    name: str
    kinds: tuple[str, ...]

    def score(
        self,
        model: nn.Module,
        structure: ModelStructure,
        cfg: PruneConfig,
        calib: CalibData,
        scores: Scores,
        progress: bool,
    ) -> None: ...

    def select(
        self,
        scores: Scores,
        cfg: PruneConfig,
        model: Any,  # nn.Module, a traced FineModel (fine plans) or None
        plan: Plan,
    ) -> None: ...

    def apply(
        self, model: nn.Module, plan: Plan, structure: ModelStructure | None
    ) -> nn.Module: ...

    def manual_plan(self, model: nn.Module, unit_ids: list[str], example=None) -> Plan: ...


def describe(model: nn.Module, structure: ModelStructure) -> dict[str, Any]:
    """What a plan needs to know about the model it was made for."""
    total = count_params(model)
    config = getattr(model, "config", None)
    return {
        "model_type": getattr(config, "model_type", type(model).__name__),
        "num_blocks": structure.num_blocks,
        "params_all": total,
        "params_non_embedding": total - embedding_params(model, structure),
        "config": json.loads(config.to_json_string()) if config is not None else {},
    }


def check_plan_fits(model: nn.Module, structure: ModelStructure, plan: Plan) -> None:
    n, total = structure.num_blocks, count_params(model) - patch_params(model)
    if n != plan.model["num_blocks"] or total != plan.model["params_all"]:
        raise UnsupportedModelError(
            f"plan was made for a model with {plan.model['num_blocks']} blocks and "
            f"{plan.model['params_all']:,} params; this one has {n} blocks and {total:,}"
        )


def require_materialized(model: nn.Module, what: str) -> None:
    """Refuse a model with weights offloaded to disk (``meta``) for code that reads them all."""
    if any(p.is_meta for p in model.parameters()):
        raise UnsupportedModelError(
            f"{what} read every weight: load the model without disk offload "
            "(more --max-memory, or --streaming)"
        )
