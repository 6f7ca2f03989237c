"""Width family: attention heads (whole KV groups) and MLP neurons, found from the traced
block, scored by magnitude / Taylor / activation statistics, sliced out of the projections."""

from __future__ import annotations

from torch import nn

from depthcut.config import PruneConfig
from depthcut.errors import ConfigError
from depthcut.graph.structure import ModelStructure
from depthcut.kinds import WIDTH_KINDS, Kind
from depthcut.methods.base import require_materialized
from depthcut.methods.width.importance import width_scores
from depthcut.methods.width.iterative import iterative_width
from depthcut.methods.width.latency import width_latency
from depthcut.methods.width.layers import width_layers
from depthcut.methods.width.plan import width_actions, width_latency_table
from depthcut.methods.width.surgery import apply_width_actions
from depthcut.planning.plan import Plan
from depthcut.scores import Scores


def score_width(model, structure, cfg: PruneConfig, calib, progress: bool = True) -> dict:
    """Per-unit head / neuron scores of every block, with the layer facts planning needs."""
    out = {}
    for kind in cfg.width_units:
        layers = width_layers(model, structure, kind)
        values = width_scores(model, layers, calib, cfg.width_importance, cfg.tau, progress)
        info = {
            w.id: {"block": w.block, "size": w.size, "unit_params": w.unit_params, "path": w.module}
            for w in layers
        }
        out[kind] = {"layers": info, "scores": values, "metric": cfg.width_importance}
        if cfg.budget.latency is not None:
            out[kind]["latency"] = width_latency(model, layers)
    if cfg.width_steps > 1:
        infos = {kind: out[kind]["layers"] for kind in out}
        removal, history = iterative_width(model, cfg, calib, infos, progress)
        for kind in out:
            out[kind]["removal"] = removal[kind]
            out[kind]["steps"] = [h[kind] for h in history]
    return out


class WidthFamily:
    name = "width"
    kinds = WIDTH_KINDS

    def score(self, model, structure, cfg: PruneConfig, calib, scores: Scores, progress) -> None:
        require_materialized(model, "head / neuron units")
        scores.width = score_width(model, structure, cfg, calib, progress)

    def select(self, scores: Scores, cfg: PruneConfig, model, plan: Plan) -> None:
        for kind in self.kinds:  # heads, then neurons (the lesson's order)
            if kind in cfg.width_units:
                actions = width_actions(scores, cfg, Kind(kind), plan)
                plan.actions += actions
                if cfg.budget.latency is not None:  # one width kind alone (config)
                    plan.run["latency"] = latency_report(scores, cfg, Kind(kind), actions)

    def apply(self, model: nn.Module, plan: Plan, structure: ModelStructure | None) -> nn.Module:
        if structure is None:
            raise ValueError("width surgery needs the model's structure")
        actions = [a for a in plan.actions if a.kind.family == self.name]
        apply_width_actions(model, structure, actions, frozenset(plan.removed_blocks))
        return model

    def manual_plan(self, model: nn.Module, unit_ids: list[str], example=None) -> Plan:
        raise ConfigError(f"hand-made plans take depth or fine units, not {unit_ids[0]!r}")


def latency_report(scores, cfg: PruneConfig, kind: Kind, actions: list) -> dict:
    """{"target", "removed", "total"} in seconds per token, as depth plans report it."""
    table = width_latency_table(scores, kind)
    removed = sum(len(a.members) * table["layers"][a.unit_id] for a in actions)
    total = table["total"]
    return {
        "target": cfg.budget.latency * total,
        "removed": removed,
        "total": total,
        "unreliable": table.get("unreliable", []),
    }
