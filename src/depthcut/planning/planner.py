"""Strategies turning Scores into a Plan under a parameter budget. Pure: no model access."""

from __future__ import annotations

from depthcut.config import PruneConfig
from depthcut.errors import BudgetError, ConfigError
from depthcut.kinds import Kind
from depthcut.planning.plan import Action, Plan
from depthcut.planning.select import Selection, candidates, check_reachable, protected_blocks
from depthcut.scores import Scores
from depthcut.units.discover import Unit
from depthcut.width.select import select_width


def budget_target(model: dict, cfg: PruneConfig) -> int:
    return cfg.budget.target(model["params_all"], model["params_non_embedding"])


def unit_pool(scores: Scores, cfg: PruneConfig) -> list[Unit]:
    units = [u for u in scores.units if u.kind in cfg.units]
    n = scores.model["num_blocks"]
    return candidates(units, n, cfg.protect_first, cfg.protect_last)


def _ranked(scores: Scores, pool: list[Unit], target: int) -> Selection:
    selection = Selection(pool)
    for unit in sorted(pool, key=lambda u: (scores.unit_scores[u.id], u.sort_key())):
        if selection.removed_params >= target:
            break
        if selection.marginal(unit) > 0:
            selection.add(unit)
    return selection


def _iterative(scores: Scores, pool: list[Unit], target: int) -> Selection:
    if not scores.sequence:
        raise ConfigError("strategy 'iterative' needs scores made with strategy='iterative'")
    selection = Selection(pool)
    for step in scores.sequence:
        if selection.removed_params >= target:
            break
        selection.add(scores.unit(step["unit"]))
    if selection.removed_params < target:
        raise BudgetError("the iterative scores stop before this budget: re-score with it")
    return selection


def _contiguous(scores: Scores, pool: list[Unit], target: int, cfg: PruneConfig) -> Selection:
    if not scores.spans:
        raise ConfigError("strategy 'contiguous' needs span scores: use importance='gromov'")
    n_blocks = scores.model["num_blocks"]
    banned = protected_blocks(n_blocks, cfg.protect_first, cfg.protect_last)
    blocks = {u.block: u for u in pool if u.kind == "block"}
    for n in range(1, n_blocks + 1):
        spans = []
        for start in range(0, n_blocks - n + 1):
            members = range(start, start + n)
            if banned.intersection(members):
                continue
            if sum(blocks[b].params for b in members) >= target:
                spans.append((scores.spans[f"{start}:{n}"], start))
        if spans:
            _, start = min(spans)
            selection = Selection(pool)
            for b in range(start, start + n):
                selection.add(blocks[b])
            return selection
    raise BudgetError("budget unreachable: no contiguous span outside the protected blocks")


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


def reachable_pool(scores: Scores, cfg: PruneConfig) -> tuple[list[Unit], int]:
    """(the unprotected depth units, the parameter target); raises when removing all of
    them cannot reach the target (checked before scoring and again when planning)."""
    pool = unit_pool(scores, cfg)
    target = budget_target(scores.model, cfg)
    what = f"units {list(cfg.depth_units)} and protect_first={cfg.protect_first}, "
    check_reachable(pool, target, what + f"protect_last={cfg.protect_last}")
    return pool, target


def depth_actions(scores: Scores, cfg: PruneConfig) -> tuple[list[Action], int]:
    """(block / sublayer removals under the budget and strategy of ``cfg``, the target)."""
    pool, target = reachable_pool(scores, cfg)
    if cfg.strategy == "ranked":
        selection = _ranked(scores, pool, target)
    elif cfg.strategy == "iterative":
        selection = _iterative(scores, pool, target)
    else:
        selection = _contiguous(scores, pool, target, cfg)
    return [_action(u, scores) for u in selection.final_units()], target


def _action(unit: Unit, scores: Scores) -> Action:
    score = scores.unit_scores.get(unit.id)
    return Action(unit.kind, unit.block, unit.path, unit.params, score)
