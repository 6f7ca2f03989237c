"""Global selection of the lowest-scoring heads / neurons (pure)."""

from __future__ import annotations

import math

from depthcut.errors import BudgetError, ConfigError
from depthcut.planning.select import amount, protected_blocks, settle


def select_width(
    layers: dict[str, dict],
    scores: dict[str, list[float]],
    fraction: float,
    num_blocks: int,
    protect: tuple[int, int] = (2, 2),
    min_units: int = 1,
    round_to: int = 1,
    skip_blocks: frozenset[int] = frozenset(),
    scope: str = "global",
) -> dict[str, list[int]]:
    """{layer id: sorted unit indices to remove}.

    ``scope="global"`` removes ``fraction`` of all units of the kind (protected layers count in
    the total), lowest scores first across layers; ``"per_layer"`` removes ``fraction`` of each
    unprotected layer, lowest first within it. Both keep ``min_units`` per layer, then round
    every pruned layer's kept width up to a multiple of ``round_to`` (removing fewer).
    """
    banned = protected_blocks(num_blocks, *protect) | set(skip_blocks)
    live = {lid: info for lid, info in layers.items() if info["block"] not in banned}
    pick = _global_pick if scope == "global" else _per_layer_pick
    removed = pick(layers, live, scores, fraction, min_units)
    return _rounded(layers, removed, round_to)


def select_width_by_time(
    layers: dict[str, dict],
    scores: dict[str, list[float]],
    costs: dict[str, float],
    target: float,
    num_blocks: int,
    mode: str = "at_least",
    protect: tuple[int, int] = (2, 2),
    min_units: int = 1,
    round_to: int = 1,
    skip_blocks: frozenset[int] = frozenset(),
) -> dict[str, list[int]]:
    """{layer id: sorted unit indices to remove}: the lowest scores across layers until their
    measured decode time (``costs``: seconds per unit of each layer) reaches ``target``, on
    the side of it that ``mode`` asks for (``planning.select.settle``); then rounded as in
    ``select_width`` (which can only lower the time removed)."""
    banned = protected_blocks(num_blocks, *protect) | set(skip_blocks)
    live = [lid for lid, info in layers.items() if info["block"] not in banned and lid in costs]
    ranked = sorted(
        (s, layers[lid]["block"], u, lid) for lid in live for u, s in enumerate(scores[lid])
    )

    def build(cap: bool) -> dict[str, list[int]]:
        removed: dict[str, list[int]] = {}
        spent = 0.0
        for _, _, unit, lid in ranked:
            if spent >= target:
                break
            room = layers[lid]["size"] - len(removed.get(lid, [])) > min_units
            if room and not (cap and spent + costs[lid] > target):
                removed.setdefault(lid, []).append(unit)
                spent += costs[lid]
        return removed

    removed = settle(build, target, mode, lambda r: time_of(r, costs))
    if mode == "at_least" and time_of(removed, costs) < target:
        raise BudgetError(
            f"budget unreachable: {amount(target, costs)} requested but only "
            f"{amount(time_of(removed, costs), costs)} are removable with min_units={min_units} "
            "in the unprotected blocks"
        )
    return _rounded(layers, removed, round_to)


def _rounded(layers: dict, removed: dict[str, list[int]], round_to: int) -> dict[str, list[int]]:
    """Every pruned layer's kept width rounded up to a multiple of ``round_to`` (removing
    fewer); a layer that rounding undoes is dropped."""
    rounded = {lid: sorted(_round(layers[lid]["size"], u, round_to)) for lid, u in removed.items()}
    return {lid: units for lid, units in rounded.items() if units}


def time_of(removed: dict[str, list[int]], costs: dict[str, float]) -> float:
    """Seconds per decoded token that removing ``removed`` saves."""
    return sum(len(units) * costs[lid] for lid, units in removed.items())


def _unreachable(want: int, got: int, min_units: int, live: dict) -> BudgetError:
    blocks = sorted(info["block"] for info in live.values())
    return BudgetError(
        f"width budget unreachable: {want} units requested, {got} removable with "
        f"min_units={min_units} in unprotected blocks {blocks}"
    )


def _global_pick(layers, live, scores, fraction, min_units) -> dict[str, list[int]]:
    want = int(round(fraction * sum(info["size"] for info in layers.values())))
    ranked = sorted(
        (s, info["block"], u, lid) for lid, info in live.items() for u, s in enumerate(scores[lid])
    )
    removed: dict[str, list[int]] = {}
    count = 0
    for _, _, unit, lid in ranked:
        if count >= want:
            break
        if layers[lid]["size"] - len(removed.get(lid, [])) > min_units:
            removed.setdefault(lid, []).append(unit)
            count += 1
    if count < want:
        raise _unreachable(want, count, min_units, live)
    return removed


def _per_layer_pick(layers, live, scores, fraction, min_units) -> dict[str, list[int]]:
    removed = {}
    for lid, info in live.items():
        want = int(round(fraction * info["size"]))
        if info["size"] - want < min_units:
            raise _unreachable(want, info["size"] - min_units, min_units, {lid: info})
        order = sorted(range(info["size"]), key=lambda u: (scores[lid][u], u))
        removed[lid] = order[:want]
    return removed


def _round(size: int, units: list[int], round_to: int) -> list[int]:
    """Drop the last-chosen removals until the kept width is a multiple of ``round_to``."""
    if round_to > size:
        raise ConfigError(f"round_to={round_to} is larger than the layer width {size}")
    kept = size - len(units)
    kept = min(size, math.ceil(kept / round_to) * round_to)
    return units[: size - kept]
