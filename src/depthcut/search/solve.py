"""One option per block, the least summed quality cost under every budget: a 0/1 program.

With x[i, o] = 1 when block i takes option o: minimise Σ q[i, o] x[i, o] subject to
Σ_o x[i, o] = 1 for every block and, per budget, Σ s[i, o] x[i, o] ≥ target (s: what the option
saves of decode time, KV bytes or parameters; ``at_most`` budgets bound it from above). Solved
exactly by HiGHS through ``scipy.optimize.milp``. The k best distinct solutions come from
re-solving with each found one cut off (Σ over its chosen x ≤ blocks − ``differ``: the next
solution changes the choice of at least ``differ`` blocks, so that re-measured candidates are
not near-copies of one another).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from depthcut.errors import BudgetError


@dataclass(frozen=True)
class Limit:
    """Σ ``saving`` of the chosen options must be ≥ ``low`` and ≤ ``high`` (``name`` for
    messages: ``latency``, ``kv`` or ``params``)."""

    name: str
    saving: np.ndarray  # per variable
    low: float
    high: float = np.inf
    total: float = 1.0  # what ``saving`` is a share of (messages give fractions)


@dataclass
class Solution:
    choice: list[int]  # per block: index of its chosen option
    objective: float
    seconds: float


def _constraints(groups: list[list[int]], limits: list[Limit], n: int) -> list[LinearConstraint]:
    pick = np.zeros((len(groups), n))
    for g, members in enumerate(groups):
        pick[g, members] = 1.0
    out = [LinearConstraint(pick, 1.0, 1.0)]
    # each budget row as shares of its total: the solver's absolute feasibility tolerance
    # (1e-7) is then relative, where a row in seconds (≈1e-3 per token) would let a budget
    # slip by 1e-4 of itself
    out += [
        LinearConstraint(lim.saving[None, :] / lim.total, lim.low / lim.total, lim.high / lim.total)
        for lim in limits
    ]
    return out


@contextmanager
def _silenced() -> Iterator[None]:
    """File descriptors 1 and 2 pointed at /dev/null: HiGHS's MIP code writes a few
    diagnostics ("transformNewIntegerFeasibleSolution") straight to the C streams, and a
    library call prints nothing."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _run(cost: np.ndarray, constraints: list) -> tuple[np.ndarray | None, float]:
    n = len(cost)
    with _silenced():
        result = milp(cost, integrality=np.ones(n), bounds=Bounds(0, 1), constraints=constraints)
    if result.status != 0 or result.x is None:
        return None, np.inf
    return np.round(result.x).astype(int), float(result.fun)


def best_k(
    quality: np.ndarray,
    groups: list[list[int]],
    limits: list[Limit],
    k: int = 3,
    differ: int = 1,
    rows: list[LinearConstraint] | None = None,
) -> list[Solution]:
    """The ``k`` cheapest feasible choices, each differing from every earlier one in at least
    ``differ`` blocks, cheapest first (fewer when fewer exist); raises ``BudgetError`` naming
    the binding budget when none is feasible (``rows``: more constraints, the runs')."""
    constraints = _constraints(groups, limits, len(quality)) + list(rows or ())
    out: list[Solution] = []
    for _ in range(k):
        started = time.perf_counter()
        x, value = _run(quality, constraints)
        if x is None:
            break
        chosen = np.flatnonzero(x)
        choice = [next(m for m in g if m in set(chosen)) for g in groups]
        out.append(Solution([g.index(c) for g, c in zip(groups, choice)], value, 0.0))
        out[-1].seconds = time.perf_counter() - started
        cut = np.zeros((1, len(quality)))
        cut[0, chosen] = 1.0
        constraints.append(LinearConstraint(cut, -np.inf, len(groups) - differ))
    if not out:
        raise _unreachable(groups, limits)
    return out


def _unreachable(groups: list[list[int]], limits: list[Limit]) -> BudgetError:
    """The budget that cannot be met (alone or with the others), with the best value reachable."""
    for lim in limits:
        reach = sum(max(lim.saving[m] for m in g) for g in groups)
        if reach < lim.low:
            return BudgetError(
                f"budget {lim.name}={lim.low / lim.total:.3g} cannot be met: the options save "
                f"at most {lim.name}={reach / lim.total:.3g}"
            )
    names = ", ".join(lim.name for lim in limits)
    return BudgetError(f"budgets {names} cannot be met together: relax one of them")
