"""Depth selection: blocks and sublayers under a parameter budget (ranked, iterative,
contiguous span). Pure: no model access."""

from __future__ import annotations

from depthcut.config import PruneConfig
from depthcut.errors import BudgetError, ConfigError
from depthcut.kinds import Kind
from depthcut.planning.plan import Action
from depthcut.planning.select import (
    Selection,
    budget_target,
    candidates,
    check_reachable,
    protected_blocks,
)
from depthcut.scores import Scores
from depthcut.units.discover import Unit


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
    blocks = {u.block: u for u in pool if u.kind is Kind.BLOCK}
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
