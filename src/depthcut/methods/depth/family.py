"""Depth family: whole blocks and attention / MLP sublayers (ShortGPT, Gromov, BlockPruner-
style units), scored on the block-input cache, removed by surgery on the block stack."""

from __future__ import annotations

from torch import nn

from depthcut.calibrate import BlockCache
from depthcut.config import PruneConfig
from depthcut.errors import ConfigError
from depthcut.graph.structure import ModelStructure, discover_structure
from depthcut.importance.registry import get_importance
from depthcut.importance.run import greedy_sequence, score_units
from depthcut.kinds import DEPTH_KINDS, Kind, UnitRef
from depthcut.methods.base import describe
from depthcut.methods.depth.planner import depth_actions, reachable_pool
from depthcut.methods.depth.surgery import remove_blocks, remove_sublayer
from depthcut.planning.plan import Action, Plan
from depthcut.scores import Scores
from depthcut.surgery.hf import renumber_layer_idx, sync_config
from depthcut.units.discover import discover_units
from depthcut.units.latency import unit_latency


class DepthFamily:
    name = "depth"
    kinds = DEPTH_KINDS

    def score(self, model, structure, cfg: PruneConfig, calib, scores: Scores, progress) -> None:
        scores.units = discover_units(model, structure, cfg.depth_units)
        metric = get_importance(cfg.metric)(tokens=cfg.tokens)
        if cfg.budget.latency is not None:
            scores.latency = unit_latency(model, scores.units)
        pool, target, size = reachable_pool(scores, cfg)  # fail fast, before calibration
        cache = BlockCache(model, structure, calib, progress)
        if cfg.strategy == "iterative":
            scores.sequence = greedy_sequence(cache, metric, pool, target, progress, size)
            scores.unit_scores = dict(scores.sequence[0]["scores"]) if scores.sequence else {}
        else:
            scores.unit_scores = score_units(cache, metric, scores.units, progress)
        if metric is not None and getattr(metric, "provides_spans", False):
            scores.spans = metric.spans(cache)
        scores.cost["forward_equivalents"] = cache.forward_equivalents

    def select(self, scores: Scores, cfg: PruneConfig, model, plan: Plan) -> None:
        actions, target, removed = depth_actions(scores, cfg)
        plan.actions += actions
        if cfg.budget.latency is None:
            plan.run["target_params"] = target
        else:
            latency = scores.latency or {}
            total = latency["total"]
            plan.run["latency"] = {"target": target, "removed": removed, "total": total} | {
                "unreliable": latency.get("unreliable", [])
            }

    def apply(self, model: nn.Module, plan: Plan, structure: ModelStructure | None) -> nn.Module:
        if structure is None:
            raise ValueError("depth surgery needs the model's structure")
        drop = set(plan.removed_blocks)
        for action in plan.actions:
            if action.kind in (Kind.ATTENTION, Kind.MLP) and action.block not in drop:
                remove_sublayer(model, structure, action.block, action.kind)
        kept = remove_blocks(model, structure, drop)
        if hasattr(model, "config"):
            sync_config(model.config, kept, structure.num_blocks)
        renumber_layer_idx(structure.block_list(model))
        return model

    def manual_plan(self, model: nn.Module, unit_ids: list[str], example=None) -> Plan:
        """Exactly these units, e.g. ``["block:3", "mlp:7"]``."""
        structure = discover_structure(model)
        kinds = tuple(sorted({UnitRef.parse(uid).kind for uid in unit_ids}))
        units = {u.id: u for u in discover_units(model, structure, kinds)} if kinds else {}
        missing = [uid for uid in unit_ids if uid not in units]
        if missing:
            raise ConfigError(f"no such units {missing}; ids look like block:3, attention:0, mlp:7")
        chosen = [units[uid] for uid in unit_ids]
        actions = [Action(u.kind, u.block, u.path, u.params) for u in chosen]
        return Plan(actions, describe(model, structure), {"strategy": "manual"})
