"""Global selection of the lowest-scoring heads / neurons (pure)."""

from __future__ import annotations

import math

from depthcut.errors import BudgetError, ConfigError
from depthcut.planning.select import protected_blocks


def select_width(
    layers: dict[str, dict],
    scores: dict[str, list[float]],
    fraction: float,
    num_blocks: int,
    protect: tuple[int, int] = (2, 2),
    min_units: int = 1,
    round_to: int = 1,
    skip_blocks: frozenset[int] = frozenset(),
) -> dict[str, list[int]]:
    """{layer id: sorted unit indices to remove}.

    Removes ``fraction`` of all units of the kind (protected layers count in the total),
    lowest scores first across layers, keeping ``min_units`` per layer; then rounds every
    pruned layer's kept width up to a multiple of ``round_to`` (removing fewer).
    """
    total = sum(info["size"] for info in layers.values())
    want = int(round(fraction * total))
    banned = protected_blocks(num_blocks, *protect) | set(skip_blocks)
    ranked = sorted(
        (s, info["block"], u, lid)
        for lid, info in layers.items()
        if info["block"] not in banned
        for u, s in enumerate(scores[lid])
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
        raise BudgetError(
            f"width budget unreachable: {want} units requested, {count} removable with "
            f"min_units={min_units} and protected blocks {sorted(banned)}"
        )
    rounded = {lid: sorted(_round(layers[lid]["size"], u, round_to)) for lid, u in removed.items()}
    return {lid: units for lid, units in rounded.items() if units}  # rounding may undo a layer


def _round(size: int, units: list[int], round_to: int) -> list[int]:
    """Drop the last-chosen removals until the kept width is a multiple of ``round_to``."""
    if round_to > size:
        raise ConfigError(f"round_to={round_to} is larger than the layer width {size}")
    kept = size - len(units)
    kept = min(size, math.ceil(kept / round_to) * round_to)
    return units[: size - kept]
