"""Iterative prune → recover → re-score: k slices of the budget, recovery after each, scores
recomputed on the recovered model (the lesson's iterative pruning)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from depthcut import log
from depthcut.config import Budget, PruneConfig
from depthcut.data import CalibData
from depthcut.errors import ConfigError
from depthcut.planning.plan import Plan
from depthcut.recovery.config import RecoverConfig
from depthcut.units.discover import count_params

Evaluate = Callable[[nn.Module], float]


def step_config(cfg: PruneConfig, base: dict, model: nn.Module, step: int, steps: int):
    """The config of step ``step`` (1-based) of ``steps``: depth removes the params still
    missing to ``step/steps`` of the budget (of the original model); width fractions are the
    per-step share ``1 - (1 - f)^(1/steps)`` of what is left, so k steps reach ``f``."""
    changes: dict[str, Any] = {}
    if cfg.depth_units or cfg.fine:
        goal = round(cfg.budget.target(base["all"], base["non_embedding"]) * step / steps)
        missing = goal - (base["all"] - count_params(model))
        if missing <= 0:
            changes["units"] = cfg.width_units  # this slice is already removed
        else:
            changes["budget"] = Budget(params_count=missing, mode=cfg.budget.mode)
    for kind, name in (("head", "heads"), ("neuron", "neurons")):
        if kind in cfg.width_units:
            changes[name] = 1.0 - (1.0 - cfg.width_fraction(kind)) ** (1.0 / steps)
    if changes.get("units") == ():
        return None
    return dataclasses.replace(cfg, **changes)


def prune_recover_loop(
    model: nn.Module,
    tokenizer,
    cfg: PruneConfig,
    calib: CalibData,
    steps: int,
    recover_cfg: RecoverConfig | None,
    evaluate: Evaluate,
    progress: bool = True,
) -> tuple[nn.Module, list[Plan], list[dict]]:
    """(pruned model, the plans applied in order, history): ``steps`` rounds of
    score → plan → (repair) → apply → perplexity → recover → perplexity. The dense ``model``
    is the distillation teacher and is left as it is."""
    from depthcut.api import plan, score
    from depthcut.eval.run import param_counts
    from depthcut.recovery.run import recover

    if steps < 1:
        raise ConfigError(f"steps={steps} must be >= 1")
    if cfg.fine and steps > 1:
        raise ConfigError(
            "units 'fine' with steps > 1: after one round the blocks are no longer uniform, "
            "so the shared block graph does not apply; use steps=1 (with recovery)"
        )
    cfg = cfg.resolved(steps)
    counts = param_counts(model)
    base = {"all": counts["params_all"], "non_embedding": counts["params_non_embedding"]}
    history: list[dict[str, Any]] = [
        {"step": 0, **counts, "ppl_pruned": evaluate(model), "ppl_recovered": None}
    ]
    current, plans = model, []
    for step in range(1, steps + 1):
        step_cfg = step_config(cfg, base, current, step, steps)
        if step_cfg is None:
            continue
        the_plan = plan(score(current, step_cfg, calib, progress), step_cfg, current)
        current = _repaired_apply(current, model, the_plan, calib, step_cfg.repair, progress)
        plans.append(the_plan)
        row: dict[str, Any] = {
            "step": step,
            **param_counts(current),
            "ppl_pruned": evaluate(current),
        }
        if recover_cfg is not None:
            current, trained = recover(current, tokenizer, recover_cfg, model, progress)
            row |= {"ppl_recovered": evaluate(current), "recovery": _brief(trained)}
        history.append(row)
        log.result(_line(row))
    return current, plans, history


def _repaired_apply(current, dense, the_plan: Plan, calib, method: str, progress: bool):
    """``the_plan`` applied to a copy of ``current``, repaired first (``--repair``); the dense
    model (the teacher) is never changed."""
    from depthcut.api import apply, repair

    if method == "none":
        return apply(current, the_plan)
    work = copy.deepcopy(current) if current is dense else current
    repair(work, the_plan, calib, method, progress)
    return apply(work, the_plan, inplace=True)


def _brief(history: dict) -> dict:
    keys = ("steps", "best_step", "best_val_loss", "stopped", "seconds")
    return {k: history[k] for k in keys}


def _line(row: dict) -> str:
    after = row.get("ppl_recovered")
    rec = f" → {after:.2f} after recovery" if after is not None else ""
    return (
        f"step {row['step']}: {row['params_all']:,} params, ppl {row['ppl_pruned']:.2f} pruned{rec}"
    )
