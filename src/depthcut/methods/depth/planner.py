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
    latency_size,
    protected_blocks,
    settle,
)
from depthcut.scores import Scores
from depthcut.units.discover import Unit


def unit_pool(scores: Scores, cfg: PruneConfig) -> list[Unit]:
    units = [u for u in scores.units if u.kind in cfg.units]
    n = scores.model["num_blocks"]
    return candidates(units, n, cfg.protect_first, cfg.protect_last)


def _ranked(scores: Scores, pool: list[Unit], target: float, cap: bool, size) -> Selection:
    """Lowest scores first until the target is reached; with ``cap``, units that would pass
    the target are skipped and smaller ones further down the ranking fill the rest."""
    selection = Selection(pool, size)
    for unit in sorted(pool, key=lambda u: (scores.unit_scores[u.id], u.sort_key())):
        if selection.removed >= target:
            break
        gain = selection.marginal(unit)
        if gain > 0 and not (cap and selection.removed + gain > target):
            selection.add(unit)
    return selection


def _iterative(scores: Scores, pool: list[Unit], target: float, cap: bool, size) -> Selection:
    """The longest prefix of the greedy sequence under the target (``cap``), or the
    shortest one that reaches it."""
    if not scores.sequence:
        raise ConfigError("strategy 'iterative' needs scores made with strategy='iterative'")
    selection = Selection(pool, size)
    for step in scores.sequence:
        unit = scores.unit(step["unit"])
        if selection.removed >= target:
            break
        if cap and selection.removed + selection.marginal(unit) > target:
            break
        selection.add(unit)
    if not cap and selection.removed < target:
        raise BudgetError("the iterative scores stop before this budget: re-score with it")
    return selection


def _contiguous(
    scores: Scores, pool: list[Unit], target: float, cfg: PruneConfig, cap: bool, size
) -> Selection:
    """The best-scoring span of the fewest blocks that reaches the target, or (``cap``) of
    the most blocks that stays under it."""
    if not scores.spans:
        raise ConfigError("strategy 'contiguous' needs span scores: use importance='gromov'")
    n_blocks = scores.model["num_blocks"]
    banned = protected_blocks(n_blocks, cfg.protect_first, cfg.protect_last)
    blocks = {u.block: u for u in pool if u.kind is Kind.BLOCK}
    selection = Selection(pool, size)
    spans = []
    for n in range(1, n_blocks + 1):
        for start in range(0, n_blocks - n + 1):
            if banned.intersection(range(start, start + n)):
                continue
            span = sum(selection.size(blocks[b]) for b in range(start, start + n))
            if (span <= target) if cap else (span >= target):
                spans.append((-n if cap else n, scores.spans[f"{start}:{n}"], start))
    if not spans:
        if cap:
            return selection
        raise BudgetError("budget unreachable: no contiguous span outside the protected blocks")
    n, _, start = min(spans)
    for b in range(start, start + abs(n)):
        selection.add(blocks[b])
    return selection


def budget_size(scores: Scores, cfg: PruneConfig) -> tuple[float, object]:
    """(the target, a unit's size against it): parameters, or seconds per decoded token
    from the scores' latency table under ``--budget latency=F``."""
    if cfg.budget.latency is None:
        return budget_target(scores.model, cfg), None
    table = scores.latency
    return cfg.budget.latency * (table or {}).get("total", 0.0), latency_size(table)


def reachable_pool(scores: Scores, cfg: PruneConfig) -> tuple[list[Unit], float, object]:
    """(the unprotected depth units, the target, the unit size); raises when removing all
    of them cannot reach the target (checked before scoring and again when planning)."""
    pool = unit_pool(scores, cfg)
    target, size = budget_size(scores, cfg)
    what = f"units {list(cfg.depth_units)} and protect_first={cfg.protect_first}, "
    check_reachable(pool, target, what + f"protect_last={cfg.protect_last}", size)
    return pool, target, size


def depth_actions(scores: Scores, cfg: PruneConfig) -> tuple[list[Action], float, float]:
    """(block / sublayer removals under the budget and strategy of ``cfg``, the target, the
    removed total in the target's unit)."""
    pool, target, size = reachable_pool(scores, cfg)

    def build(cap: bool) -> Selection:
        if cfg.strategy == "ranked":
            return _ranked(scores, pool, target, cap, size)
        if cfg.strategy == "iterative":
            return _iterative(scores, pool, target, cap, size)
        return _contiguous(scores, pool, target, cfg, cap, size)

    selection = settle(build, target, cfg.budget.mode, lambda s: s.removed)
    actions = [_action(u, scores) for u in selection.final_units()]
    return actions, target, selection.removed


def _action(unit: Unit, scores: Scores) -> Action:
    score = scores.unit_scores.get(unit.id)
    return Action(unit.kind, unit.block, unit.path, unit.params, score)
