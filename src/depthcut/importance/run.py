"""Loops that apply a metric to units: one-shot scoring and greedy iterative selection."""

from __future__ import annotations

from tqdm.auto import tqdm

from depthcut.calibrate import BlockCache
from depthcut.planning.select import Selection
from depthcut.units.discover import Unit


def score_units(cache: BlockCache, metric, units: list[Unit], progress: bool = True):
    """{unit id: score} for every unit, each re-running only from its block."""
    out: dict[str, float] = {}
    for unit in tqdm(units, desc=f"score {metric.name}", disable=not progress):
        out[unit.id] = float(metric.score(cache, unit))
    return out


def greedy_sequence(
    cache: BlockCache, metric, pool: list[Unit], target: float, progress: bool = True, size=None
) -> list[dict]:
    """SLEB/BlockPruner-style greedy: remove the lowest-scoring unit, re-score, repeat.

    Stops when the removed parameters reach ``target``. Ties break by block then kind.
    Re-scoring after each removal re-runs only from each candidate's block, on inputs that
    the cache refreshed from the removed unit's block onward.
    """
    selection = Selection(pool, size)
    sequence: list[dict] = []
    bar = tqdm(total=target, desc=f"iterative {metric.name}", disable=not progress, unit="param")
    while selection.removed < target:
        live = [u for u in pool if selection.marginal(u) > 0]
        if not live:
            break
        scores = {u.id: float(metric.score(cache, u)) for u in live}
        best = min(live, key=lambda u: (scores[u.id], u.sort_key()))
        before = selection.removed
        selection.add(best)
        cache.remove(best)
        sequence.append({"unit": best.id, "score": scores[best.id], "scores": scores})
        bar.update(selection.removed - before)
    bar.close()
    return sequence
