"""score → plan → apply → save: orchestration only. Every pruning family (depth, width, fine)
implements one interface (``depthcut.methods``); these functions loop over the families a
config or plan names and never branch on one."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from depthcut import parallel
from depthcut.config import AUTO, PruneConfig
from depthcut.data import CalibData
from depthcut.devices import device_of
from depthcut.errors import ConfigError
from depthcut.graph.structure import discover_structure
from depthcut.methods import apply_plan, check_applies, describe, families, plan_units
from depthcut.planning.plan import Plan
from depthcut.quantization import refuse_quantized
from depthcut.scores import Scores

if TYPE_CHECKING:
    from depthcut.methods.fine.model import FineModel

__all__ = ["apply", "check_applies", "describe", "fine_units", "ordering_ablation", "plan"]
__all__ += ["frontier", "plan_units", "prune", "repair", "score"]


def score(model: nn.Module, cfg: PruneConfig, calib: CalibData, progress: bool = True) -> Scores:
    """Importance of every unit of ``cfg.units`` on ``calib`` (expensive; save the result).

    With ``strategy="iterative"`` this runs the greedy removal up to the budget and records
    its sequence; the other strategies score each unit once.

    >>> scores = dc.score(model, cfg, calib); scores.save("scores.json")  # doctest: +SKIP
    """
    refuse_quantized(model, "score")
    cfg = cfg.resolved()
    _refuse_auto(cfg, "dc.score")
    started = time.perf_counter()
    model.eval()
    parallel.check_supported(cfg)  # under torch.distributed: this process scores its share
    structure = discover_structure(model)
    _check_repair_tokens(model, structure, cfg, calib)  # before any scoring
    calib = parallel.shard(calib).to(device_of(model))
    scores = Scores(cfg.metric, [], {}, describe(model, structure), cfg.to_dict())
    for family in families(cfg.units):
        family.score(model, structure, cfg, calib, scores, progress)
    parallel.reduce_scores(scores, cfg, calib)
    scores.cost["seconds"] = time.perf_counter() - started
    return scores


def _check_repair_tokens(model, structure, cfg: PruneConfig, calib: CalibData) -> None:
    from depthcut.refit.needs import check_calibration, repair_need
    from depthcut.refit.run import require_lm_head

    if cfg.repair != "none":
        require_lm_head(model, cfg.repair)
    check_calibration(repair_need(model, structure, cfg), calib)


def plan(scores: Scores, cfg: PruneConfig, model: nn.Module | FineModel | None = None) -> Plan:
    """Cheap and pure: which units go under ``cfg``'s budget and strategy.

    Fine-grained plans simulate Prune(f) on the model's graph: ``model`` (any weights; a
    CNN must be given; or its traced ``FineModel``) or, for LLMs, a skeleton built from the
    config in ``scores``."""
    cfg = cfg.resolved()
    _refuse_auto(cfg, "dc.plan")
    the_plan = Plan([], scores.model, {"config": cfg.to_dict(), "metric": scores.metric})
    for family in families(cfg.units):
        family.select(scores, cfg, model, the_plan)
    return the_plan


def apply(
    model: nn.Module,
    plan: Plan,
    calib: CalibData | None = None,
    inplace: bool = False,
    progress: bool = True,
) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself) with the plan's units physically removed.

    Given ``calib``, the kept weights are first refit by the plan's repair (its config's
    ``repair``, e.g. ls for the default method), so ``apply(model, plan(score(…)), calib)``
    is the model ``prune`` gives; without it, or when the plan was already repaired on this
    model (``repair``), the units are only removed.
    """
    refuse_quantized(model, "prune")
    method = plan.run.get("config", {}).get("repair", "none")
    if calib is None or method in ("none", "auto"):
        return apply_plan(model, plan, inplace=inplace)
    check_applies(model, plan)  # before a repair works on it (apply_plan checks otherwise)
    work = model if inplace else copy.deepcopy(model)
    repair(work, plan, calib, method, progress)
    return apply_plan(work, plan, inplace=True)


def prune(
    model: nn.Module, cfg: PruneConfig, calib: CalibData, progress: bool = True, runtime=None
) -> tuple[nn.Module, Plan, Scores]:
    """score, plan, repair (by ``cfg.repair``) and apply in one call; ``model`` is left as it
    was (a repair works on a copy). ``units="auto"``: the joint search (``frontier``) for the
    config's budget, timed by ``runtime``; its scores are the option table's costs."""
    from depthcut.search.runtime import refuse_without_search

    refuse_without_search(getattr(runtime, "name", "torch"), cfg.auto)
    if cfg.auto:
        return _prune_joint(model, cfg, calib, progress, runtime)
    scores = score(model, cfg, calib, progress)
    the_plan = plan(scores, cfg, model)
    return apply(model, the_plan, calib, progress=progress), the_plan, scores


def frontier(
    model: nn.Module,
    calib: CalibData,
    budgets: list,
    table=None,
    k: int = 3,
    progress: bool = True,
    runtime=None,
    protect: tuple[int, int] = (1, 1),
) -> tuple:
    """(option table, {budget label: plan}): the measured best joint plan — one option per
    block across blocks, sublayers, KV groups and MLP widths — for each of ``budgets``
    (``depthcut.search.Budgets`` or their text, ``"latency=0.3"``). A quarter of ``calib``'s
    batches is held back to measure candidates; ``apply(model, plan, calib)`` realises one.
    ``runtime`` times the options and candidates: PyTorch on the model's device by default,
    or :class:`depthcut.LlamaCpp` (``LlamaCpp(tokenizer)``: exported GGUFs timed in llama.cpp).
    ``protect``: the blocks at each end that only keep (``PruneConfig.protect_first`` /
    ``protect_last``; the same default).

    >>> table, plans = dc.frontier(model, calib, ["latency=0.2", "latency=0.3"])  # doctest: +SKIP
    """
    from depthcut.search.budgets import Budgets
    from depthcut.search.frontier import frontier as run_frontier
    from depthcut.search.frontier import held_back
    from depthcut.search.runtime import TORCH

    refuse_quantized(model, "prune")
    model.eval()
    wanted = [b if isinstance(b, Budgets) else Budgets.parse(b.split("+")) for b in budgets]
    cfg = PruneConfig(units=(AUTO,), budget=wanted[0].to_budget(), repair="ls")
    _check_repair_tokens(model, discover_structure(model), cfg, held_back(calib)[0])
    return run_frontier(model, calib, wanted, table, k, progress, runtime or TORCH, protect)


def joint_plan(
    model: nn.Module, cfg: PruneConfig, calib: CalibData, progress: bool = True, runtime=None
) -> tuple[Scores, Plan, CalibData]:
    """(scores, plan, the calibration its repair fits on) of ``units="auto"``: the joint
    search for the config's budget, timed by ``runtime`` (default PyTorch); the option
    table's costs stand for the scores."""
    from depthcut.search.budgets import Budgets
    from depthcut.search.frontier import held_back

    budgets = [Budgets.from_budget(cfg.budget)]
    protect = (cfg.protect_first, cfg.protect_last)
    table, plans = frontier(
        model, calib, budgets, progress=progress, runtime=runtime, protect=protect
    )
    scores = Scores("joint", [], {}, table.model, cfg.resolved().to_dict(), cost=dict(table.cost))
    return scores, next(iter(plans.values())), held_back(calib)[0]


def _prune_joint(model: nn.Module, cfg: PruneConfig, calib: CalibData, progress: bool, runtime):
    scores, the_plan, fit = joint_plan(model, cfg, calib, progress, runtime)
    return apply(model, the_plan, fit, progress=progress), the_plan, scores


def _refuse_auto(cfg: PruneConfig, what: str) -> None:
    if cfg.auto:
        raise ConfigError(
            f"units='auto' is the joint search: use dc.prune or dc.frontier, not {what}"
        )


def repair(
    model: nn.Module, plan: Plan, calib: CalibData, method: str = "ls", progress: bool = True
) -> dict:
    """Refit ``model``'s kept weights for ``plan`` in place (before ``apply``), never worse on
    held-back calibration batches; the report is also kept in ``plan.run["repair"]``."""
    from depthcut.refit import repair as run_repair

    report = run_repair(model, plan, calib, method, progress)
    plan.run["repair"] = report
    return report


def fine_units(model: nn.Module, example: torch.Tensor | None = None) -> list:
    """Every fine-grained unit (attention regions, single Linear/Conv layers) of ``model``;
    CNNs need an ``example`` input."""
    from depthcut.methods.fine.model import FineModel

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
