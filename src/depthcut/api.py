"""score → plan → apply → save: orchestration only (the work lives in the modules)."""

from __future__ import annotations

import json
import time
from typing import Any

import torch
from torch import nn

from depthcut.calibrate import BlockCache
from depthcut.config import PruneConfig
from depthcut.data import CalibData
from depthcut.graph.structure import ModelStructure, discover_structure
from depthcut.importance.registry import get_importance
from depthcut.importance.run import greedy_sequence, score_units
from depthcut.planning.plan import Plan
from depthcut.planning.planner import budget_target, make_plan, unit_pool
from depthcut.planning.select import check_reachable
from depthcut.quantize import refuse_quantized
from depthcut.scores import Scores
from depthcut.surgery.actions import apply_plan
from depthcut.units.discover import count_params, discover_units, embedding_params
from depthcut.width.importance import width_scores
from depthcut.width.iterative import iterative_width
from depthcut.width.layers import width_layers


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


def score(model: nn.Module, cfg: PruneConfig, calib: CalibData, progress: bool = True) -> Scores:
    """Importance of every unit of ``cfg.units`` on ``calib`` (expensive; save the result).

    With ``strategy="iterative"`` this runs the greedy removal up to the budget and records
    its sequence; the other strategies score each unit once.

    >>> scores = dc.score(model, cfg, calib); scores.save("scores.json")  # doctest: +SKIP
    """
    refuse_quantized(model, "score")
    started = time.perf_counter()
    model.eval()
    structure = discover_structure(model)
    info = describe(model, structure)
    scores = Scores(cfg.importance, [], {}, info, cfg.to_dict())
    if cfg.fine:
        _score_fine(model, cfg, calib, scores, progress)
    if cfg.depth_units:
        _score_depth(model, structure, cfg, calib, scores, progress)
    if cfg.width_units:
        scores.width = score_width(model, structure, cfg, calib, progress)
    scores.cost["seconds"] = time.perf_counter() - started
    return scores


def _score_depth(model, structure, cfg: PruneConfig, calib, scores: Scores, progress) -> None:
    scores.units = discover_units(model, structure, cfg.depth_units)
    metric = get_importance(cfg.importance)(tokens=cfg.tokens)
    pool, target = unit_pool(scores, cfg), budget_target(scores.model, cfg)
    what = f"units {list(cfg.depth_units)}, protect_first={cfg.protect_first}, "
    check_reachable(pool, target, what + f"protect_last={cfg.protect_last}")  # fail fast
    cache = BlockCache(model, structure, calib, progress)
    if cfg.strategy == "iterative":
        scores.sequence = greedy_sequence(cache, metric, pool, target, progress)
        scores.unit_scores = dict(scores.sequence[0]["scores"]) if scores.sequence else {}
    else:
        scores.unit_scores = score_units(cache, metric, scores.units, progress)
    if getattr(metric, "provides_spans", False):
        scores.spans = metric.spans(cache)
    scores.cost["forward_equivalents"] = cache.forward_equivalents


def _score_fine(model, cfg: PruneConfig, calib, scores: Scores, progress) -> None:
    from depthcut.importance.fine import FineScorer, iterative_fine
    from depthcut.units.fine_model import FineModel

    fm = FineModel(model)
    scores.units = fm.units()
    cache = BlockCache(model, fm.structure, calib, progress, backward=True)
    try:
        scorer = FineScorer(fm, cache, cfg.importance, cfg.tokens)
        fine: dict = {"channel": scorer.channel_json()}
        if cfg.strategy == "iterative":
            target = budget_target(scores.model, cfg)
            fine["sequence"] = iterative_fine(scorer, cfg, target, progress)
        scores.unit_scores, fine["alone"], fine["refused"] = scorer.score_all(progress)
    finally:
        model.zero_grad(set_to_none=True)
    scores.fine = fine
    scores.cost["forward_equivalents"] = cache.forward_equivalents


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
    if cfg.width_steps > 1:
        infos = {kind: out[kind]["layers"] for kind in out}
        removal, history = iterative_width(model, cfg, calib, infos, progress)
        for kind in out:
            out[kind]["removal"] = removal[kind]
            out[kind]["steps"] = [h[kind] for h in history]
    return out


def plan(scores: Scores, cfg: PruneConfig, model: nn.Module | None = None) -> Plan:
    """Cheap and pure: which units go under ``cfg``'s budget and strategy.

    Fine-grained plans simulate Prune(f) on the model's graph: ``model`` (any weights; a
    CNN must be given) or, for LLMs, a skeleton built from the config in ``scores``."""
    if cfg.fine:
        return _fine_plan(scores, cfg, model)
    return make_plan(scores, cfg)


def _fine_plan(scores: Scores, cfg: PruneConfig, model: nn.Module | None) -> Plan:
    from depthcut.io import build_from_config
    from depthcut.planning.fine import select_fine
    from depthcut.units.fine_model import FineModel, fine_plan_info

    shape = scores.model.get("example_shape")
    if model is None and shape is not None:
        from depthcut.errors import ConfigError

        raise ConfigError("planning fine-grained units of a CNN needs the model: plan(..., model=)")
    model = model if model is not None else build_from_config(scores.model["config"])
    example = None if shape is None else torch.zeros(shape)
    target = budget_target(scores.model, cfg)
    fm = FineModel(model, example)
    actions = select_fine(fm, scores, cfg, target)
    run = {"config": cfg.to_dict(), "metric": scores.metric, "target_params": target}
    return Plan(actions, fine_plan_info(fm, scores.model), run)


def plan_units(model: nn.Module, unit_ids: list[str], example: torch.Tensor | None = None) -> Plan:
    """A hand-made plan removing exactly these depth units, e.g. ``["block:3", "mlp:7"]``, or
    these fine-grained units by module path (CNNs: with an ``example`` input)."""
    from depthcut.errors import ConfigError
    from depthcut.planning.plan import Action

    if unit_ids and all(":" not in uid for uid in unit_ids):
        return _plan_fine_paths(model, unit_ids, example)
    structure = discover_structure(model)
    kinds = tuple(sorted({uid.split(":")[0] for uid in unit_ids}))
    units = {u.id: u for u in discover_units(model, structure, kinds)} if kinds else {}
    missing = [uid for uid in unit_ids if uid not in units]
    if missing:
        raise ConfigError(f"no such units {missing}; ids look like block:3, attention:0, mlp:7")
    chosen = [units[uid] for uid in unit_ids]
    actions = [Action(u.kind, u.block, u.path, u.params) for u in chosen]
    return Plan(actions, describe(model, structure), {"strategy": "manual"})


def _plan_fine_paths(model: nn.Module, paths: list[str], example=None) -> Plan:
    """A hand-made fine-grained plan: Prune(f) of these module paths, in order (channels for
    reconciliation by weight magnitude of their group, no calibration data)."""
    from depthcut.planning.plan import Action
    from depthcut.units.fine import UnitRefused
    from depthcut.units.fine_model import FineModel, fine_plan_info, magnitude_channels

    fm = FineModel(model, example)
    by_path = {u.path: u for u in fm.units()}
    for root in fm.roots:
        for u in fm.local_units(include_excluded=True):
            if u.reason and root.full(u.module) in paths:
                raise UnitRefused(f"{root.full(u.module)}: cannot be pruned: it {u.reason}")
    missing = [p for p in paths if p not in by_path]
    if missing:
        from depthcut.errors import ConfigError

        raise ConfigError(f"no such fine units {missing}; e.g. {next(iter(by_path))}")
    states, channels, actions = {}, {}, []
    for path in paths:
        root, local = fm.local(by_path[path])
        if root.index not in channels:
            channels[root.index] = magnitude_channels(fm.graph, fm.module(root))
        state = states.get(root.index) or fm.new_state()
        state, labels, delta = fm.try_prune(root, state, local.node, channels[root.index])
        states[root.index] = state
        actions.append(Action("fine", root.index, path, delta, None, tuple(labels)))
    if example is not None:
        from depthcut.units.fine_model import describe_cnn

        info = describe_cnn(model, example)
    else:
        info = describe(model, discover_structure(model))
    return Plan(actions, fine_plan_info(fm, info), {"strategy": "manual"})


def apply(model: nn.Module, plan: Plan, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself) with the plan's units physically removed."""
    refuse_quantized(model, "prune")
    return apply_plan(model, plan, inplace=inplace)


def prune(
    model: nn.Module, cfg: PruneConfig, calib: CalibData, progress: bool = True
) -> tuple[nn.Module, Plan, Scores]:
    """score, plan and apply in one call."""
    scores = score(model, cfg, calib, progress)
    the_plan = plan(scores, cfg, model)
    return apply_plan(model, the_plan), the_plan, scores


def fine_units(model: nn.Module, example: torch.Tensor | None = None) -> list:
    """Every fine-grained unit (attention regions, single Linear/Conv layers) of ``model``;
    CNNs need an ``example`` input."""
    from depthcut.units.fine_model import FineModel

    return FineModel(model, example).units()


def ordering_ablation(model, scores, cfg, evaluate) -> dict[str, dict]:
    """Thesis Table 4.5: the same scores and budget, units taken least important first
    (ascending, the method), most important first or in random order; ``evaluate(pruned)``
    (e.g. perplexity) for each order."""
    import dataclasses

    from depthcut.config import ORDERS

    out = {}
    for order in ORDERS:
        the_plan = plan(scores, dataclasses.replace(cfg, order=order), model)
        out[order] = {
            "fraction": the_plan.fraction(),
            "value": evaluate(apply(model, the_plan)),
            "units": [a.path for a in the_plan.actions],
        }
    return out
