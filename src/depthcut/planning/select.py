"""Bookkeeping of a growing selection of units under a parameter target (pure)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from depthcut.config import PruneConfig
from depthcut.errors import BudgetError, ConfigError
from depthcut.kinds import Kind, UnitRef
from depthcut.units.discover import Unit

T = TypeVar("T")


def protected_blocks(num_blocks: int, first: int, last: int) -> set[int]:
    return set(range(min(first, num_blocks))) | set(range(max(num_blocks - last, 0), num_blocks))


def candidates(units: Iterable[Unit], num_blocks: int, first: int, last: int) -> list[Unit]:
    """Units outside the protected first/last blocks."""
    keep = protected_blocks(num_blocks, first, last)
    return [u for u in units if u.block not in keep]


def params_of(unit: Unit) -> int:
    """A unit's size under a parameter budget."""
    return unit.params


class Selection:
    """Chosen units; a block covers its sublayers, and choosing both sublayers of a block
    chooses the block (what the plan removes), so ``removed`` is what the plan will count.
    ``size`` is what a unit costs against the target (its parameters, or its measured
    latency, where a block costs more than its two sublayers)."""

    def __init__(self, units: Iterable[Unit], size: Callable[[Unit], float] | None = None):
        self.by_id = {u.id: u for u in units}
        self.chosen: dict[str, Unit] = {}
        self.size = size or params_of

    def covered(self, unit: Unit) -> bool:
        return unit.id in self.chosen or UnitRef(Kind.BLOCK, unit.block).id in self.chosen

    def _completed(self, unit: Unit) -> Unit:
        """The block that choosing sublayer ``unit`` completes (its other sublayer is
        chosen), else ``unit``."""
        if unit.kind is Kind.BLOCK:
            return unit
        block = self.by_id.get(UnitRef(Kind.BLOCK, unit.block).id)
        other = any(u.block == unit.block and u.kind is not unit.kind for u in self.chosen.values())
        return block if block is not None and other else unit

    def marginal(self, unit: Unit) -> float:
        """What choosing ``unit`` adds to the removed total (in ``size``)."""
        if self.covered(unit):
            return 0
        unit = self._completed(unit)
        if unit.kind is not Kind.BLOCK:
            return self.size(unit)
        inside = [u for u in self.chosen.values() if u.block == unit.block]
        return self.size(unit) - sum(self.size(u) for u in inside)

    def add(self, unit: Unit) -> None:
        unit = self._completed(unit)
        if unit.kind is Kind.BLOCK:
            for key in [k for k, u in self.chosen.items() if u.block == unit.block]:
                del self.chosen[key]
        self.chosen[unit.id] = unit

    @property
    def removed_params(self) -> int:
        return sum(u.params for u in self.chosen.values())

    @property
    def removed(self) -> float:
        """The removed total in ``size``."""
        return sum(self.size(u) for u in self.chosen.values())

    def final_units(self) -> list[Unit]:
        """The chosen units in block order."""
        return sorted(self.chosen.values(), key=Unit.sort_key)


def check_reachable(pool: list[Unit], target: float, what: str, size=None) -> None:
    """Raise if removing every candidate unit still cannot reach ``target``."""
    sel = Selection(pool, size)
    for unit in sorted(pool, key=lambda u: (u.kind is not Kind.BLOCK, u.sort_key())):
        if sel.marginal(unit) > 0:
            sel.add(unit)
    if sel.removed < target:
        raise BudgetError(
            f"budget unreachable: {amount(target, size)} requested but only "
            f"{amount(sel.removed, size)} are removable with {what}"
        )


def amount(value: float, size=None) -> str:
    """A target or a removed total in words: parameters, or milliseconds of decode time."""
    return f"{int(value):,} parameters" if size is None else f"{value * 1e3:.3f} ms per token"


def budget_target(model: dict, cfg: PruneConfig) -> int:
    return cfg.budget.target(model["params_all"], model["params_non_embedding"])


def latency_size(table: dict | None) -> Callable[[Unit], float]:
    """A unit's size under a latency budget: its measured seconds per decoded token."""
    if not table:
        raise ConfigError(
            "--budget latency: these scores have no latency table; score with --budget latency=F"
        )
    return lambda u: table["units"][u.id]


def settle(
    build: Callable[[bool], T], target: float, mode: str, removed: Callable[[T], float]
) -> T:
    """The selection on the side of ``target`` that the budget ``mode`` asks for.

    ``build(False)`` grows a selection until it reaches the target (``at_least``);
    ``build(True)`` never lets it pass the target (``at_most``); ``nearest`` keeps the one
    closer to the target (the smaller on a tie, never an empty one).
    """
    if mode == "at_least":
        return build(False)
    under = build(True)
    if mode == "at_most":
        if removed(under) == 0:
            raise BudgetError(
                f"budget mode at_most: no unit fits in the target ({target:,.6g}); raise "
                "the budget or use --budget-mode nearest"
            )
        return under
    over = build(False)
    if removed(under) == 0 or removed(over) - target < target - removed(under):
        return over
    return under
