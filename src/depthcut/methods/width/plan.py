"""Width selection as plan actions: the heads / neurons a config removes, in the blocks the
depth actions chosen so far keep."""

from __future__ import annotations

from depthcut.config import PruneConfig
from depthcut.errors import ConfigError
from depthcut.kinds import Kind
from depthcut.methods.width.select import select_width
from depthcut.planning.plan import Action, Plan
from depthcut.scores import Scores


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
        cfg.width_fraction(kind),
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
