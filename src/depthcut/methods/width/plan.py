"""Width selection as plan actions: the heads / neurons a config removes, in the blocks the
depth actions chosen so far keep."""

from __future__ import annotations

from depthcut.config import PruneConfig
from depthcut.errors import BudgetError, ConfigError
from depthcut.kinds import Kind
from depthcut.methods.width.select import select_width
from depthcut.planning.plan import Action, Plan
from depthcut.planning.select import amount, budget_target
from depthcut.scores import Scores


def width_fraction(scores: Scores, cfg: PruneConfig, kind: Kind) -> float:
    """The fraction of ``kind`` units to remove: as given, or (``cfg.width_from_budget``) the
    parameter target over all the parameters of that kind (protected layers included, as the
    global selection counts them)."""
    if not cfg.width_from_budget:
        return cfg.width_fraction(kind)
    layers = scores.width[kind]["layers"].values()
    total = sum(info["size"] * info["unit_params"] for info in layers)
    target = budget_target(scores.model, cfg)
    if not 0 < target < total:
        raise BudgetError(
            f"budget unreachable: {amount(target)} requested but all {kind}s hold {amount(total)}"
        )
    return target / total


def width_actions(scores: Scores, cfg: PruneConfig, kind: Kind, plan: Plan) -> list[Action]:
    """The ``kind`` (head / neuron) removals of ``cfg``, in the blocks ``plan`` keeps whole."""
    if not scores.width or kind not in scores.width:
        raise ConfigError(f"units include {kind} but the scores have no {kind} scores")
    data = scores.width[kind]
    key = "heads" if kind is Kind.HEAD else "neurons"
    if "removal" in data and scores.config.get(key) != cfg.width_fraction(kind):
        raise ConfigError(
            f"iterative {kind} scores were made for {key}={scores.config.get(key)}:"
            " re-score with this fraction"
        )
    skip = frozenset(a.block for a in plan.actions if a.kind in (Kind.BLOCK, kind.sublayer))
    removed = data.get("removal") or select_width(
        data["layers"],
        data["scores"],
        width_fraction(scores, cfg, kind),
        scores.model["num_blocks"],
        (cfg.protect_first, cfg.protect_last),
        cfg.min_heads if kind is Kind.HEAD else 1,
        cfg.round_to if kind is Kind.NEURON else 1,
        skip,
        cfg.width_scope,
    )
    actions = []
    for lid, units in sorted(removed.items(), key=lambda kv: data["layers"][kv[0]]["block"]):
        info = data["layers"][lid]
        mean = sum(data["scores"][lid][u] for u in units) / len(units)
        actions.append(
            Action(
                kind,
                info["block"],
                info["path"],
                len(units) * info["unit_params"],
                mean,
                members=tuple(units),
            )
        )
    return actions
