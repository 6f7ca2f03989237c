"""Selecting fine-grained units under a parameter target (thesis §3.4 and beyond).

* ``interleave`` (Algorithm 8): non-attention and attention units ranked separately, taken in
  the pattern non-attention, attention, non-attention (2:1) until the target.
* ``unified``: one ranking of every unit by importance per parameter it removes (depthcut's
  answer to mixing unit kinds whose scores are not comparable per unit).
* ``ranked``: one ranking by raw importance.
* ``iterative``: the greedy sequence recorded while scoring (re-scored after every cut).
* ``order``: ascending (least important first, the method), descending or random — the
  thesis' ordering ablation (Table 4.5).

Each pick is Prune(f) on the block's current state: the parameters it removes (reconciliation
included) are measured on that state, and a refused unit (frozen space) is skipped.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from depthcut.errors import ConfigError
from depthcut.kinds import FineOp, Kind
from depthcut.methods.fine.importance import channel_from_json
from depthcut.methods.fine.model import FineModel
from depthcut.methods.fine.state import UnitRefused
from depthcut.planning.plan import Action
from depthcut.planning.select import settle
from depthcut.units.discover import Unit


def ordered(units: list[Unit], key, order: str, seed: int = 0) -> list[Unit]:
    if order == "random":
        out = sorted(units, key=Unit.sort_key)
        random.Random(seed).shuffle(out)
        return out
    return sorted(units, key=lambda u: (key(u), u.sort_key()), reverse=order == "descending")


def interleave(non_attention: list[Unit], attention: list[Unit]) -> Iterator[Unit]:
    """Algorithm 8's 2:1 pattern; when one list runs out the other continues."""
    a, b, k = list(non_attention), list(attention), 0
    while a or b:
        want_b = k % 3 == 1
        source = (b if b else a) if want_b else (a if a else b)
        k += 1
        yield source.pop(0)


def candidates(units: list[Unit], scores, cfg) -> Iterator[Unit]:
    fine = scores.fine or {}
    value = scores.unit_scores
    if cfg.strategy == "iterative":
        by_id = {u.id: u for u in units}
        yield from (by_id[s["unit"]] for s in fine.get("sequence", []) if s["unit"] in by_id)
        return
    if cfg.strategy == "unified":
        alone = fine.get("alone", {})
        yield from ordered(
            units, lambda u: value[u.id] / max(alone.get(u.id, 1), 1), cfg.order, cfg.seed
        )
        return
    if cfg.strategy == "ranked":
        yield from ordered(units, lambda u: value[u.id], cfg.order, cfg.seed)
        return
    attn = [u for u in units if u.op is FineOp.ATTENTION]
    rest = [u for u in units if u.op is not FineOp.ATTENTION]
    key = lambda u: value[u.id]  # noqa: E731
    yield from interleave(
        ordered(rest, key, cfg.order, cfg.seed), ordered(attn, key, cfg.order, cfg.seed)
    )


def allowed(fm: FineModel, scores, cfg) -> list[Unit]:
    scored = [u for u in scores.units if u.id in scores.unit_scores]
    return fm.unprotected(scored, cfg.protect_first, cfg.protect_last)


def select_fine(fm: FineModel, scores, cfg, target: int) -> list[Action]:
    """Actions (in pruning order) that remove ``target`` parameters on the side of it that
    the budget mode asks for."""
    mode = cfg.budget.mode
    return settle(lambda cap: _select(fm, scores, cfg, target, cap), target, mode, _removed)


def _removed(actions: list[Action]) -> int:
    return sum(a.params for a in actions)


def _select(fm: FineModel, scores, cfg, target: int, cap: bool) -> list[Action]:
    """Candidates in order until ``target`` is reached; with ``cap``, a unit that would pass
    it is skipped (its Prune(f) is not committed)."""
    if not scores.fine:
        raise ConfigError("these scores have no fine-grained data; score with units='fine'")
    channel = channel_from_json(scores.fine["channel"], fm.graph)
    states = {r.index: fm.new_state() for r in fm.roots}
    pool = allowed(fm, scores, cfg)
    actions, removed = [], 0
    for unit in candidates(pool, scores, cfg):
        if removed >= target:
            break
        root, local = fm.local(unit)
        try:
            state, labels, delta = fm.try_prune(
                root, states[root.index], local.node, channel.get(root.index)
            )
        except UnitRefused:
            continue
        if cap and removed + delta > target:
            continue
        states[root.index] = state
        removed += delta
        score = scores.unit_scores.get(unit.id)
        actions.append(
            Action(Kind.FINE, root.index, unit.path, delta, score, channels=tuple(labels))
        )
    return actions
