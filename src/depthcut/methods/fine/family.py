"""Fine family (thesis Chapter 3): Prune(f) of single Linear/Conv layers and attention regions
on the torch.export graph of a block (or a whole CNN), with width reconciliation."""

from __future__ import annotations

import torch
from torch import nn

from depthcut.calibrate import BlockCache
from depthcut.config import PruneConfig
from depthcut.errors import ConfigError, UnsupportedModelError
from depthcut.graph.structure import ModelStructure, discover_structure
from depthcut.kinds import Kind
from depthcut.methods.base import check_plan_fits, describe, require_materialized
from depthcut.methods.fine.importance import FineScorer, iterative_fine
from depthcut.methods.fine.model import (
    FineModel,
    apply_fine_actions,
    describe_cnn,
    fine_plan_info,
    magnitude_channels,
)
from depthcut.methods.fine.state import UnitRefused
from depthcut.planning.plan import Action, Plan
from depthcut.planning.select import budget_target
from depthcut.scores import Scores
from depthcut.skeleton import build_from_config
from depthcut.units.discover import count_params


class FineFamily:
    name = "fine"
    kinds: tuple[str, ...] = ("fine",)

    def score(self, model, structure, cfg: PruneConfig, calib, scores: Scores, progress) -> None:
        require_materialized(model, "fine units")
        fm = FineModel(model)
        scores.units = fm.units()
        cache = BlockCache(model, fm.structure, calib, progress, backward=True)
        try:
            scorer = FineScorer(fm, cache, cfg.metric, cfg.tokens)
            fine: dict = {"channel": scorer.channel_json()}
            if cfg.strategy == "iterative":
                target = budget_target(scores.model, cfg)
                fine["sequence"] = iterative_fine(scorer, cfg, target, progress)
            scores.unit_scores, fine["alone"], fine["refused"] = scorer.score_all(progress)
        finally:
            model.zero_grad(set_to_none=True)
        scores.fine = fine
        scores.cost["forward_equivalents"] = cache.forward_equivalents

    def select(self, scores: Scores, cfg: PruneConfig, model, plan: Plan) -> None:
        """Simulates Prune(f) on the model's graph: ``model`` (any weights; a CNN must be
        given; or its ``FineModel``) or, for LLMs, a skeleton built from the config in
        ``scores``."""
        from depthcut.methods.fine.planner import select_fine

        shape = scores.model.get("example_shape")
        if model is None and shape is not None:
            raise ConfigError(
                "planning fine-grained units of a CNN needs the model: plan(..., model=)"
            )
        if isinstance(model, FineModel):  # already traced (streaming)
            fm = model
        else:
            model = model if model is not None else build_from_config(scores.model["config"])
            fm = FineModel(model, None if shape is None else torch.zeros(shape))
        target = budget_target(scores.model, cfg)
        plan.actions += select_fine(fm, scores, cfg, target)
        plan.run["target_params"] = target
        plan.model = fine_plan_info(fm, scores.model)

    def apply(self, model: nn.Module, plan: Plan, structure: ModelStructure | None) -> nn.Module:
        shape = plan.model.get("example_shape")
        if shape is None:
            check_plan_fits(model, discover_structure(model), plan)
        elif count_params(model) != plan.model["params_all"]:
            raise UnsupportedModelError(
                "plan was made for a model with a different parameter count"
            )
        return apply_fine_actions(model, plan.actions, shape, plan.model.get("fine_graph"))

    def manual_plan(self, model: nn.Module, paths: list[str], example=None) -> Plan:
        """Prune(f) of these module paths, in order (channels for reconciliation by weight
        magnitude of their group, no calibration data)."""
        fm = FineModel(model, example)
        by_path = {u.path: u for u in fm.units()}
        for root in fm.roots:
            for u in fm.local_units(include_excluded=True):
                if u.reason and root.full(u.module) in paths:
                    raise UnitRefused(f"{root.full(u.module)}: cannot be pruned: it {u.reason}")
        missing = [p for p in paths if p not in by_path]
        if missing:
            raise ConfigError(f"no such fine units {missing}; e.g. {next(iter(by_path))}")
        states: dict = {}
        channels: dict = {}
        actions: list = []
        for path in paths:
            root, local = fm.local(by_path[path])
            if root.index not in channels:
                channels[root.index] = magnitude_channels(fm.graph, fm.module(root))
            state = states.get(root.index) or fm.new_state()
            state, labels, delta = fm.try_prune(root, state, local.node, channels[root.index])
            states[root.index] = state
            actions.append(Action(Kind.FINE, root.index, path, delta, channels=tuple(labels)))
        if example is not None:
            info = describe_cnn(model, example)
        else:
            info = describe(model, discover_structure(model))
        return Plan(actions, fine_plan_info(fm, info), {"strategy": "manual"})
