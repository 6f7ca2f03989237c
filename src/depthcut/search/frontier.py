"""Joint plans for one budget (``PruneConfig(units="auto")``) or many (the frontier), built on
one option table: the calibration's last quarter of batches is held back for the search's
measurements, the rest scores the options and fits the repairs."""

from __future__ import annotations

from torch import nn

from depthcut.data import CalibData
from depthcut.errors import CalibrationError
from depthcut.planning.plan import Plan
from depthcut.search.budgets import Budgets
from depthcut.search.joint import dense_perplexity, reference, search, solve_plans
from depthcut.search.library import OptionTable, build_table, check_protect, check_table
from depthcut.search.runtime import TORCH, Runtime


def held_back(calib: CalibData) -> tuple[CalibData, CalibData]:
    """(fit, check): the last quarter of the batches (at least one) held back for measuring."""
    batches = len(calib.batches())
    if batches < 2:
        raise CalibrationError(
            "the joint search holds back a quarter of the calibration batches: give at least "
            f"two batches (now {batches}; raise --n-samples)"
        )
    rows = (batches - max(1, batches // 4)) * calib.batch_size
    ids, mask = calib.input_ids, calib.attention_mask
    return (
        CalibData(ids[:rows], mask[:rows], calib.batch_size),
        CalibData(ids[rows:], mask[rows:], calib.batch_size),
    )


def check_reachable(table: OptionTable, budgets: list[Budgets]) -> None:
    """Raise ``BudgetError`` for a budget the table's options cannot meet (one solve each, a
    second or less), before any budget's search: a frontier's last budget fails at once, not
    after the searches of the others (on Gemma3-270M the options save at most 17% of the
    decode time, its LM head being most of it)."""
    for b in budgets:
        solve_plans(table, b, k=1)


def frontier(
    model: nn.Module,
    calib: CalibData,
    budgets: list[Budgets],
    table: OptionTable | None = None,
    k: int = 3,
    progress: bool = True,
    runtime: Runtime = TORCH,
    protect: tuple[int, int] = (1, 1),
    copies: bool = True,
) -> tuple[OptionTable, dict[str, Plan]]:
    """The option table and the measured best joint plan of each budget ({label: plan}), every
    time measured by ``runtime``; the first and last ``protect`` blocks only keep; ``copies``:
    the check measures on the held-back windows' ``copying_windows`` too."""
    from depthcut.graph.structure import discover_structure
    from depthcut.methods.base import describe

    check_protect(protect)
    fit, check = held_back(calib)
    if table is None:
        table = build_table(model, fit, progress, runtime=runtime)
    else:
        check_table(table, describe(model, discover_structure(model)), runtime)
    table = table.protected(*protect)
    check_reachable(table, budgets)
    ref = reference(model, check, copies)
    plans, dense = {}, dense_perplexity(ref)
    for b in budgets:
        plans[b.label], _ = search(model, table, b, fit, check, k=k, ref=ref, runtime=runtime)
        plans[b.label].run["search"]["dense_ppl"] = dense
    return table, plans
