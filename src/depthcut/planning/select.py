"""Bookkeeping of a growing selection of units under a parameter target (pure)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from depthcut.config import PruneConfig
from depthcut.errors import BudgetError
from depthcut.kinds import Kind, UnitRef
from depthcut.units.discover import Unit

T = TypeVar("T")


def protected_blocks(num_blocks: int, first: int, last: int) -> set[int]:
    return set(range(min(first, num_blocks))) | set(range(max(num_blocks - last, 0), num_blocks))


def candidates(units: Iterable[Unit], num_blocks: int, first: int, last: int) -> list[Unit]:
    """Units outside the protected first/last blocks."""
    keep = protected_blocks(num_blocks, first, last)
    return [u for u in units if u.block not in keep]


class Selection:
    """Chosen units; a block covers its sublayers, and both sublayers make a block."""

    def __init__(self, units: Iterable[Unit]):
        self.by_id = {u.id: u for u in units}
        self.chosen: dict[str, Unit] = {}

    def covered(self, unit: Unit) -> bool:
        return unit.id in self.chosen or UnitRef(Kind.BLOCK, unit.block).id in self.chosen

    def marginal(self, unit: Unit) -> int:
        """Parameters that choosing ``unit`` adds to the removed total."""
        if self.covered(unit):
            return 0
        if unit.kind is not Kind.BLOCK:
            return unit.params
        inside = [u for u in self.chosen.values() if u.block == unit.block]
        return unit.params - sum(u.params for u in inside)

    def add(self, unit: Unit) -> None:
        if unit.kind is Kind.BLOCK:
            for key in [k for k, u in self.chosen.items() if u.block == unit.block]:
                del self.chosen[key]
        self.chosen[unit.id] = unit

    @property
    def removed_params(self) -> int:
        return sum(u.params for u in self.chosen.values())

    def final_units(self) -> list[Unit]:
        """Chosen units with a block standing for both of its sublayers, in block order."""
        out: list[Unit] = []
        for unit in sorted(self.chosen.values(), key=Unit.sort_key):
            kinds = {u.kind for u in self.chosen.values() if u.block == unit.block}
            block = self.by_id.get(UnitRef(Kind.BLOCK, unit.block).id)
            if unit.kind is not Kind.BLOCK and kinds == {"attention", "mlp"} and block is not None:
                if block not in out:
                    out.append(block)
            else:
                out.append(unit)
        return out


def check_reachable(pool: list[Unit], target: int, what: str) -> None:
    """Raise if removing every candidate unit still cannot reach ``target`` parameters."""
    sel = Selection(pool)
    for unit in sorted(pool, key=lambda u: (u.kind is not Kind.BLOCK, u.sort_key())):
        if sel.marginal(unit) > 0:
            sel.add(unit)
    if sel.removed_params < target:
        raise BudgetError(
            f"budget unreachable: {target:,} parameters requested but only "
            f"{sel.removed_params:,} are removable with {what}"
        )


def budget_target(model: dict, cfg: PruneConfig) -> int:
    return cfg.budget.target(model["params_all"], model["params_non_embedding"])


def settle(build: Callable[[bool], T], target: int, mode: str, removed: Callable[[T], int]) -> T:
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
                f"budget mode at_most: no unit fits in {target:,} parameters; raise the "
                "budget or use --budget-mode nearest"
            )
        return under
    over = build(False)
    if removed(under) == 0 or removed(over) - target < target - removed(under):
        return over
    return under
