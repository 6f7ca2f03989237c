"""Repair-aware depth importance (``ls``): what a unit's removal leaves after the
least-squares repair (``--repair ls``, ``depthcut.refit.ls``) that follows it.

For a unit u and the units the cache has removed so far, u's maximal run of removed slots has a
writer (the last kept slot before it, output M), the residual stream H after the run with u
removed and Y without it (the current model's). The repair's map T is fitted on the even
calibration batches and the score is the weighted error left on the odd (held-back) ones:

    mean_t ‖(Y_t − H_t + M_t) − M_t T‖² / ‖Y_t‖²

With no repair possible (a run without a writer, or an attention slot of a parallel block, then
measured at the block output) T = I: the score is then the relative squared distance
‖Y − H‖² / ‖Y‖², so the units the repair fixes and those it cannot are ranked on one scale.
One d × d solve per unit and one to three block runs per batch.
"""

from __future__ import annotations

import torch

from depthcut.calibrate import BlockCache  # noqa: TC001
from depthcut.errors import ConfigError, UnsupportedModelError
from depthcut.importance import functional as F
from depthcut.importance.registry import register_importance
from depthcut.kinds import Kind
from depthcut.refit.ls import (
    DEPTH_RIDGE,
    Run,
    maximal_runs,
    mid_stream,
    require_sequential,
    slots_of,
    solve,
    split,
    token_weights,
    weighted_grams,
    writer_module,
    writer_output,
)
from depthcut.units.discover import Unit


def _slots(unit: Unit) -> set:
    return slots_of(unit.kind, unit.block)


def unit_run(cache: BlockCache, unit: Unit, sequential) -> Run:
    """The run of removed slots that removing ``unit`` makes (with the cache's removed ones);
    its writer is None where the repair cannot act, and an attention end of a block that is
    not ``sequential(block)`` (parallel attention and MLP) is measured at the block output."""
    removed = _slots(unit).union(*(_slots(u) for u in cache.removed))
    (run,) = [r for r in maximal_runs(removed, cache.num_blocks) if _slots(unit) <= _run_slots(r)]
    block, kind = run.end
    if kind is Kind.ATTENTION and not sequential(block):
        return Run(None, run.units, (block, Kind.MLP))
    if run.writer is None:
        return run
    try:
        writer_module(cache.model, cache.structure, run.writer)
    except UnsupportedModelError:
        return Run(None, run.units, run.end)
    return run


def _run_slots(run: Run) -> set:
    return set().union(*(_slots(u) for u in run.units))


@register_importance("ls")
class RepairedDistance:
    """Relative squared distance left after the least-squares repair (see the module)."""

    scope = "local"

    def __init__(self, tokens: str = "all"):
        self.tokens = tokens
        self._sequential: dict[int, bool] = {}  # per block, checked once (a block run)

    def _is_sequential(self, cache: BlockCache, block: int) -> bool:
        if block not in self._sequential:
            try:
                require_sequential(cache, block)
                self._sequential[block] = True
            except ConfigError:
                self._sequential[block] = False
        return self._sequential[block]

    def score(self, cache: BlockCache, unit: Unit) -> float:
        run = unit_run(cache, unit, lambda block: self._is_sequential(cache, block))
        fit, check = split(len(cache.batches))
        t = None
        if run.writer is not None:
            rows = (self._rows(cache, run, unit, b, cache.masks(b).bool()) for b in fit)
            xtx, xty, _ = weighted_grams(rows)
            t = solve(xtx, xty, DEPTH_RIDGE)
        total, count = 0.0, 0
        for b in check:
            mask = F.token_mask(cache.masks(b), self.tokens)
            x, y, w = self._rows(cache, run, unit, b, mask)
            left = y - (x.double() @ t if t is not None else x.double())
            total += float((w * left.pow(2)).sum())
            count += int(mask.sum())
        return total / max(count, 1)

    def _rows(self, cache: BlockCache, run: Run, unit: Unit, b: int, mask) -> tuple:
        """(M, Y − H + M, 1/‖Y‖²) over the ``mask``ed tokens of batch ``b`` (M = 0 without a
        writer, so that the residual is Y − H)."""
        target = _stream(cache, run.end, b)
        stream = _stream_without(cache, unit, run.end, b)
        writer = run.writer
        m = torch.zeros_like(target) if writer is None else writer_output(cache, writer, b)
        y = (m + target - stream)[mask].double()
        return m[mask].double(), y, token_weights(target[mask].double())


def _stream(cache: BlockCache, end, b: int) -> torch.Tensor:
    """The current model's stream after slot ``end``."""
    block, kind = end
    return cache.inputs[block + 1][b] if kind is Kind.MLP else mid_stream(cache, block, b)


def _stream_without(cache: BlockCache, unit: Unit, end, b: int) -> torch.Tensor:
    """The stream after slot ``end`` with ``unit`` removed too (the slots from ``unit`` to
    ``end`` are all removed, so an attention ``end`` passes its block's input on)."""
    block, kind = end
    skip = {u.block for u in [*cache.removed, unit] if u.kind is Kind.BLOCK}
    hidden = cache.inputs[unit.block][b]
    with cache.with_bypass([unit]):
        for j in range(unit.block, block + (kind is Kind.MLP)):
            if j not in skip:
                hidden = cache.run_block(j, b, hidden)
    return hidden
