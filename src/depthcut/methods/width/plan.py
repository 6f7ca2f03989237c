"""Width selection as plan actions: the heads / neurons a config removes, in the blocks the
depth actions chosen so far keep."""

from __future__ import annotations

from depthcut.config import PruneConfig
from depthcut.errors import BudgetError, ConfigError
from depthcut.kinds import Kind
from depthcut.methods.width.select import select_width, select_width_by_time
from depthcut.planning.plan import Action, Plan
from depthcut.planning.select import amount, budget_target
from depthcut.scores import Scores


def width_fraction(scores: Scores, cfg: PruneConfig, kind: Kind) -> float:
    """The fraction of ``kind`` units to remove: as given, or (``cfg.width_from_budget``) the
    parameter target over all the parameters of that kind (protected layers included, as the
    global selection counts them)."""
    if not cfg.width_from_budget:
        return cfg.width_fraction(kind)
    layers = scores.width_of(kind)["layers"].values()
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
    data = scores.width_of(kind)
    key = "heads" if kind is Kind.HEAD else "neurons"
    if "removal" in data and scores.config.get(key) != cfg.width_fraction(kind):
        raise ConfigError(
            f"iterative {kind} scores were made for {key}={scores.config.get(key)}:"
            " re-score with this fraction"
        )
    skip = frozenset(a.block for a in plan.actions if a.kind in (Kind.BLOCK, kind.sublayer))
    removed = data.get("removal") or _select(scores, cfg, kind, skip)
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


def _select(scores: Scores, cfg: PruneConfig, kind: Kind, skip: frozenset) -> dict:
    """{layer id: units to remove} under the config's parameter or latency budget."""
    data = scores.width_of(kind)
    protect = (cfg.protect_first, cfg.protect_last)
    min_units = cfg.min_heads if kind is Kind.HEAD else 1
    round_to = cfg.round_to if kind is Kind.NEURON else 1
    n = scores.model["num_blocks"]
    if cfg.budget.latency is None:
        fraction = width_fraction(scores, cfg, kind)
        return select_width(
            data["layers"], data["scores"], fraction, n, protect, min_units, round_to, skip,
            cfg.width_scope,
        )  # fmt: skip
    table = width_latency_table(scores, kind)
    target = cfg.budget.latency * table["total"]
    return select_width_by_time(
        data["layers"], data["scores"], table["layers"], target, n, cfg.budget.mode, protect,
        min_units, round_to, skip,
    )  # fmt: skip


def width_latency_table(scores: Scores, kind: Kind) -> dict:
    """The measured per-unit decode time of ``kind``'s layers (made when scoring)."""
    table = scores.width_of(kind).get("latency")
    if not table:
        raise ConfigError(
            f"--budget latency: these {kind} scores have no latency table; score with "
            "--budget latency=F"
        )
    return table
