"""The joint plan for one set of budgets: solve, assemble the k best, re-measure, correct.

``solve_plans`` turns the option table into the 0/1 program of ``search.solve`` and returns the
k best plans by predicted cost, taken in turn from the ranking of each pricing of the narrower
levels asked for (``OptionTable.priced``: the model's KL per unit of stream error, or each
block's own; by default the table's own). ``search`` assembles each (refit by
``--repair ls``, units removed), measures its decode time against the dense model
(interleaved, batch 1, cached) and its next-token KL to the dense model on held-back batches,
and keeps the measured best among those whose measured speed-up honours the latency budget.
When none does, the predicted savings are scaled by what was measured (measured ÷ predicted)
and the program re-solved: the report lists every round.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator
from itertools import zip_longest
from typing import Any, cast

import numpy as np
import torch
from scipy.optimize import LinearConstraint
from torch import nn

from depthcut.config import AUTO, PruneConfig
from depthcut.data import CalibData, sequences, with_copies
from depthcut.errors import BudgetError
from depthcut.importance import functional as F
from depthcut.methods import apply_plan
from depthcut.ops import out_features
from depthcut.planning.plan import Plan
from depthcut.refit.run import repair
from depthcut.search.budgets import Budgets
from depthcut.search.library import PRICINGS, OptionTable
from depthcut.search.options import Option
from depthcut.search.runtime import TORCH, Runtime
from depthcut.search.solve import Limit, best_k
from depthcut.surgery.share import shared_copy
from depthcut.timing import interleaved
from depthcut.units.latency import decode_seconds, prompt_ids, synchronizer, warmed_prompt

TOLERANCE = 0.05  # a measured latency saving within 5% (relative) of the budget honours it
KEEP_SHARE = 0.1  # the dense log-probabilities stay in memory up to this share of the weights
MIN_CORRECTION = 0.1  # a measured saving at or below 0 (timer noise) scales by this, not by ≤ 0
DIFFER = 3  # blocks in which each re-measured candidate differs from the better ones


def flat_options(table: OptionTable) -> tuple[list[Option], list[list[int]]]:
    """Every option of every block in one list (with the block's places in the runs the
    table priced), and each block's indices into it."""
    options: list[Option] = []
    groups: list[list[int]] = []
    for i in range(len(table.blocks)):
        here = table.options(i) + table.runs(i)
        groups.append(list(range(len(options), len(options) + len(here))))
        options += here
    return options, groups


def run_rows(options: list[Option], groups: list[list[int]]) -> list[LinearConstraint]:
    """The rows that make runs whole and exact: every block of a run is chosen with its first
    one, and no removed block or run ends right before another begins (``--repair ls``
    would fold the two as one longer run, which the table did not price). None without runs."""
    index = {o: n for n, o in enumerate(options)}
    firsts = {o.run: index[o] for o in options if o.run is not None and o.block == o.run[0]}
    if not firsts:
        return []
    rows = []
    for o in options:
        if o.run is not None and o.block != o.run[0]:
            rows.append(({index[o]: 1.0, firsts[o.run]: -1.0}, 0.0, 0.0))
    for i in range(len(groups) - 1):
        ends = [n for n in groups[i] if _ends_removal(options[n])]
        starts = [n for n in groups[i + 1] if _starts_removal(options[n])]
        rows.append(({n: 1.0 for n in ends + starts}, -np.inf, 1.0))
    return [_sparse_row(coefficients, low, high, len(options)) for coefficients, low, high in rows]


def _ends_removal(o: Option) -> bool:
    return o.removes_block and (o.run is None or o.block == sum(o.run) - 1)


def _starts_removal(o: Option) -> bool:
    return o.removes_block and (o.run is None or o.block == o.run[0])


def _sparse_row(coefficients: dict[int, float], low: float, high: float, n: int):
    a = np.zeros((1, n))
    for k, v in coefficients.items():
        a[0, k] = v
    return LinearConstraint(a, low, high)


def limits(
    table: OptionTable,
    options: list[Option],
    budgets: Budgets,
    scale: float,
    prefill_scale: float = 1.0,
) -> list:
    """The program's budget rows; ``scale`` (``prefill_scale``) corrects the predicted decode
    (prefill) time savings."""
    mode, out = budgets.mode, []
    given = budgets.given()
    if "latency" in given:
        total = table.latency["total"]
        saving = np.array([_time_saved(table, o) for o in options]) * scale
        out.append(_limit("latency", saving, given["latency"] * total, total, mode))
    if "prefill" in given:
        total = table.prefill["total"]
        saving = np.array([_prefill_saved(table, o) for o in options]) * prefill_scale
        out.append(_limit("prefill", saving, given["prefill"] * total, total, mode))
    if "kv" in given:
        full = np.array([table.kv(_keep_of(table, o)) for o in options], dtype=float)
        saving = full - np.array([table.kv(o) for o in options], dtype=float)
        total = sum(
            table.kv(_keep_of(table, table.options(i)[0])) for i in range(len(table.blocks))
        )
        out.append(_limit("kv", saving, given["kv"] * total, total, mode))
    if "params" in given:
        key = "params_all" if budgets.count == "all" else "params_non_embedding"
        total = table.model[key]
        saving = np.array([table.params(o) for o in options], dtype=float)
        out.append(_limit("params", saving, given["params"] * total, total, mode))
    return out


def _limit(name: str, saving, target: float, total: float, mode: str) -> Limit:
    if mode == "at_most":
        return Limit(name, saving, -np.inf, target, total)
    if mode == "nearest":
        return Limit(name, saving, target * (1 - TOLERANCE), target * (1 + TOLERANCE), total)
    return Limit(name, saving, target, np.inf, total)


def _keep_of(table: OptionTable, o: Option) -> Option:
    return table.options(o.block)[0]


def _time_saved(table: OptionTable, o: Option) -> float:
    return table.seconds(_keep_of(table, o)) - table.seconds(o)


def _prefill_saved(table: OptionTable, o: Option) -> float:
    return table.prefill_seconds(_keep_of(table, o)) - table.prefill_seconds(o)


def assemble(table: OptionTable, chosen: list[Option], budgets: Budgets) -> Plan:
    """The plan realising ``chosen`` (one option per block), refit by ls when applied."""
    actions = [a for o in chosen for a in table.actions(o)]
    saved = sum(_time_saved(table, o) for o in chosen)
    cfg = PruneConfig(units=(AUTO,), budget=budgets.to_budget(), repair="ls")
    total = table.latency["total"]
    run: dict[str, Any] = {
        "config": cfg.to_dict(),
        "metric": "joint",
        "search": {
            "budgets": budgets.given() | {"count": budgets.count, "mode": budgets.mode},
            "options": [o.name for o in chosen],
            "predicted_cost": sum(map(table.quality, chosen)),
            "predicted_narrowed": sum(map(table.narrowed_cost, chosen)),
            "narrowing": table.narrowing,
        },
        "latency": {"target": (budgets.latency or 0.0) * total, "removed": saved, "total": total},
    }
    if left_out := table.left_out():
        run["search"]["left_out"] = left_out
    if budgets.prefill is not None:
        total, context = table.prefill["total"], table.prefill["context"]
        saved = sum(_prefill_saved(table, o) for o in chosen)
        target = budgets.prefill * total
        run["prefill"] = {"target": target, "removed": saved, "total": total, "context": context}
    return Plan(actions, table.model, run)


def solve_plans(
    table: OptionTable,
    budgets: Budgets,
    k: int = 3,
    scale: float = 1.0,
    prefill_scale: float = 1.0,
    pricings: tuple[str, ...] | None = None,
) -> list[Plan]:
    """The ``k`` plans of least summed quality cost under ``budgets``, taken in turn from the
    ranking of each of ``pricings`` (default: only the table's own; the first ranking's best
    first), each a different choice."""
    options, groups = flat_options(table)
    differ = min(DIFFER, len(groups))
    rows = limits(table, options, budgets, scale, prefill_scale)
    whole_runs = run_rows(options, groups)  # the same for every pricing
    ranked = []
    for pricing in pricings or (table.pricing,):
        priced = table.priced(pricing)
        quality = np.array([priced.quality(o) for o in options])
        found = best_k(quality, groups, rows, k, differ, whole_runs)
        ranked.append([(priced, sol) for sol in found])
    plans: list[Plan] = []
    seen: set[tuple[int, ...]] = set()
    for priced, sol in (pair for turn in zip_longest(*ranked) for pair in turn if pair):
        if len(plans) == k:
            break
        if tuple(sol.choice) in seen:
            continue
        seen.add(tuple(sol.choice))
        chosen = [options[g[c]] for g, c in zip(groups, sol.choice)]
        plan = assemble(priced, chosen, budgets)
        plan.run["search"] |= {
            "objective": sol.objective,
            "solver_seconds": sol.seconds,
            "pricing": priced.pricing,
        }
        plans.append(plan)
    return plans


def portfolio(table: OptionTable) -> tuple[str, ...]:
    """Every pricing, the table's own first (``search(..., pricings=portfolio(table))``):
    the candidates come from each in turn and the held-back measurement chooses."""
    return (table.pricing, *(p for p in PRICINGS if p != table.pricing))


class Reference:
    """The dense model's next-token log-probabilities on the held-back text, one sequence at a
    time (``rows``: (sequence as a batch, its log-probabilities)). They are kept in memory when
    small beside the weights (``KEEP_SHARE``), else recomputed at each reading: on the 1.5B
    model, 20 held-back windows of 256 tokens over a 151,936-word vocabulary are 3.1 GB, 0.44×
    its checkpoint, while recomputing them costs a tenth of a candidate's refit."""

    def __init__(
        self, model: nn.Module, heldout: CalibData, keep: bool | None = None, check: str = "text"
    ):
        self.model, self.check = model, check
        self.sequences = [row for b in heldout.batches() for row in sequences(b)]
        if keep is None:
            keep = _log_prob_bytes(model, heldout) <= KEEP_SHARE * _weight_bytes(model)
        self.kept = [self._log_probs(r) for r in self.sequences] if keep else None

    @torch.no_grad()
    def _log_probs(self, row: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.log_probs(self.model(**row, use_cache=False).logits)

    def rows(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        for r, row in enumerate(self.sequences):
            yield row, self.kept[r] if self.kept is not None else self._log_probs(row)


def _log_prob_bytes(model: nn.Module, heldout: CalibData) -> int:
    """Bytes of float32 log-probabilities over the vocabulary for every held-back position."""
    head = cast(Any, model).get_output_embeddings()  # a method of transformers' models
    return heldout.input_ids.numel() * out_features(head) * 4


def _weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def reference(model: nn.Module, heldout: CalibData, copies: bool = False) -> Reference:
    """The dense model's next-token log-probabilities on every held-back sequence; with
    ``copies``, on each sequence's ``copying_windows`` too (the search's check)."""
    if copies:
        return Reference(model, with_copies(heldout), check="text + copies")
    return Reference(model, heldout)


@torch.no_grad()
def held_back_scores(model: nn.Module, ref: Reference) -> tuple[float, float]:
    """(mean KL(dense ‖ model) over the real tokens of the held-back sequences, the model's
    perplexity on them), one forward per sequence."""
    kl, kl_count, nll, nll_count = 0.0, 0, 0.0, 0
    for row, logp in ref.rows():
        logits = model(**row, use_cache=False).logits
        ids, mask = row["input_ids"], row["attention_mask"]
        s, n = F.masked_sum(F.token_kl(logp, logits), mask.bool())
        kl, kl_count = kl + s, kl_count + n
        s, n = F.masked_sum(F.token_nll(logits, ids), F.target_mask(ids, mask, "all"))
        nll, nll_count = nll + s, nll_count + n
    return kl / max(kl_count, 1), math.exp(nll / max(nll_count, 1))


def dense_perplexity(ref: Reference) -> float:
    """The dense model's perplexity on the held-back sequences, from its ``reference``."""
    return math.exp(F.mean_nll((logp, row) for row, logp in ref.rows()))


def decode_ratio(dense: nn.Module, pruned: nn.Module, steps: int = 16, repeats: int = 5):
    """(pruned ÷ dense decode seconds per token, other CPU %): medians of interleaved runs."""
    sync = synchronizer(next(dense.parameters()).device)
    ids = warmed_prompt(dense, 64)
    warmed_prompt(pruned, 64)
    calls: dict[str, Callable[[], object]] = {
        "dense": lambda: decode_seconds(dense, ids, steps, sync),
        "pruned": lambda: decode_seconds(pruned, ids, steps, sync),
    }
    seconds, other = interleaved(calls, repeats=repeats)
    return statistics.median(seconds["pruned"]) / statistics.median(seconds["dense"]), other


def realise(model: nn.Module, plan: Plan, calib: CalibData) -> nn.Module:
    """A refit copy of ``model`` with the plan's units removed; it shares every tensor that
    neither the repair nor the surgery changed with ``model`` (``surgery.share``)."""
    work = shared_copy(model)
    plan.run["repair"] = repair(work, plan, calib, "ls", progress=False)
    return apply_plan(work, plan, inplace=True)


def prefill_ratio(dense: nn.Module, pruned: nn.Module, context: int, repeats: int = 3):
    """(pruned ÷ dense seconds of one uncached ``context``-token forward, other CPU %):
    medians of interleaved runs."""
    sync = synchronizer(next(dense.parameters()).device)
    ids = prompt_ids(dense, context)

    def run(m: nn.Module) -> None:
        with torch.no_grad():
            m(ids, use_cache=False)
        sync()

    calls: dict[str, Callable[[], object]] = {
        "dense": lambda: run(dense),
        "pruned": lambda: run(pruned),
    }
    seconds, other = interleaved(calls, repeats=repeats)
    return statistics.median(seconds["pruned"]) / statistics.median(seconds["dense"]), other


def measure(model, plan: Plan, calib: CalibData, ref: Reference, runtime: Runtime = TORCH) -> dict:
    """Held-back KL and measured decode-time (and, under a prefill budget, prefill-time)
    saving of the refit, pruned plan, timed by ``runtime``."""
    pruned = realise(model, plan, calib)
    pre = plan.run.get("prefill")
    timed = runtime.compare(model, pruned, pre["context"] if pre else None)
    kl, ppl = held_back_scores(pruned, ref)
    predicted = plan.run["latency"]["removed"] / plan.run["latency"]["total"]
    out = {"kl": kl, "ppl": ppl, "saved": 1.0 - timed["decode"], "predicted": predicted}
    out["other_cpu"] = timed["other_cpu"]
    if pre:
        saved = 1.0 - timed["prefill"]
        out |= {"prefill_saved": saved, "prefill_predicted": pre["removed"] / pre["total"]}
    return out


TIMED = {"latency": ("saved", "predicted"), "prefill": ("prefill_saved", "prefill_predicted")}


def _timed(budgets: Budgets) -> dict[str, float]:
    """The time budgets given ({latency / prefill: fraction}), which measurements check."""
    return {k: v for k, v in budgets.given().items() if k in TIMED}


def _honours_all(measured: dict, budgets: Budgets) -> bool:
    return all(honours(measured[TIMED[k][0]], v, budgets.mode) for k, v in _timed(budgets).items())


def _miss(measured: dict, budgets: Budgets) -> float:
    return sum(abs(measured[TIMED[k][0]] - v) for k, v in _timed(budgets).items())


def honours(measured: float, target: float | None, mode: str) -> bool:
    """Whether a measured latency saving honours the budget on ``mode``'s side."""
    if target is None:
        return True
    slack = TOLERANCE * target
    if mode == "at_least":
        return measured >= target - slack
    if mode == "at_most":
        return measured <= target + slack
    return abs(measured - target) <= slack


def search(
    model: nn.Module,
    table: OptionTable,
    budgets: Budgets,
    calib: CalibData,
    heldout: CalibData,
    k: int = 3,
    rounds: int = 3,
    ref: Reference | None = None,
    runtime: Runtime = TORCH,
    pricings: tuple[str, ...] | None = None,
    reprice: bool = False,
    copies: bool = True,
) -> tuple[Plan, list[dict]]:
    """The measured best joint plan under ``budgets`` and the report of every round (its
    candidates timed by ``runtime``; drawn in turn from each of ``pricings``, by default the
    table's own only: ``portfolio(table)`` gives both, but the held-back KL that chooses between
    them ranked a per-block candidate first whose held-out KL was 1.8× its held-back one).

    ``reprice``: after the first round, the narrower levels' costs are scaled by what the
    candidates measured (``_narrowing``) and the program solved again; the best measured
    candidate of every round that honours the budgets is kept. Not the default: on SmolLM2 it
    gained at 10% and 20% of decode time and lost at 30%, where a check on the held-back
    windows alone kept a plan of attention removals whose held-out perplexity was 2.8× the
    unrepriced plan's (with their copying probes, the check keeps the first round's plan).

    ``copies``: the check (without ``ref``) measures on the held-back windows and on their
    ``copying_windows`` alike; a plan that loses in-context copying is seen there."""
    ref = reference(model, heldout, copies) if ref is None else ref
    scales, report = dict.fromkeys(TIMED, 1.0), list[dict]()
    measured: list[tuple[Plan, dict]] = []
    for r in range(rounds):
        try:
            plans = solve_plans(table, budgets, k, scales["latency"], scales["prefill"], pricings)
        except BudgetError:
            if not measured:
                raise
            break  # corrected savings no longer reach the budget: keep the closest measured
        seen = [p.run["search"]["options"] for p, _ in measured]
        plans = [p for p in plans if p.run["search"]["options"] not in seen]
        found = [(p, measure(model, p, calib, ref, runtime)) for p in plans]
        measured += found
        row = {"round": r, "scale": scales["latency"], "narrowing": table.narrowing}
        row |= {"prefill_scale": scales["prefill"]} if budgets.prefill is not None else {}
        report.append(row | {"candidates": [_row(p, m) for p, m in found]})
        ok = [(p, m) for p, m in measured if _honours_all(m, budgets)]
        if reprice and r == 0 and (factor := _narrowing(found)) is not None:
            table = table.repriced(factor)
        elif ok or not _timed(budgets):
            break
        if not ok:
            for name in _timed(budgets):
                scales[name] *= _correction(found, *TIMED[name])
    if not measured:
        raise ValueError("the joint search measured no plan")
    ok = [(p, m) for p, m in measured if _honours_all(m, budgets)]
    plan, found_best = (
        min(ok, key=lambda pm: pm[1]["kl"])
        if ok
        else min(measured, key=lambda pm: _miss(pm[1], budgets))
    )
    plan.run["search"] |= {"measured": found_best, "rounds": report, "runtime": runtime.name}
    plan.run["search"]["check"] = ref.check
    return plan, report


def _narrowing(found: list[tuple[Plan, dict]]) -> float | None:
    """Measured ÷ predicted cost of the narrower levels: the median over the candidates that
    narrow anything of (held-back KL − the predicted cost of their removals) ÷ the predicted
    cost of their narrower levels (the removals' costs are measured KLs already), within
    [MIN_CORRECTION, 1 / MIN_CORRECTION]; None when no candidate narrows anything."""
    ratios = []
    for plan, m in found:
        predicted = plan.run["search"]
        narrowed = predicted["predicted_narrowed"] / predicted["narrowing"]  # at scale 1
        if narrowed > 0:
            removed = predicted["predicted_cost"] - predicted["predicted_narrowed"]
            ratios.append(max(m["kl"] - removed, 0.0) / narrowed)
    if not ratios:
        return None
    return min(max(statistics.median(ratios), MIN_CORRECTION), 1 / MIN_CORRECTION)


def _row(plan: Plan, measured: dict) -> dict:
    return {
        "options": plan.run["search"]["options"],
        "objective": plan.run["search"]["objective"],
        "pricing": plan.run["search"]["pricing"],
    } | measured


def _correction(found: list, saved: str = "saved", predicted: str = "predicted") -> float:
    """The median of measured ÷ predicted time saving over the candidates: the factor the
    predicted savings are scaled by before the next round."""
    ratios = [m[saved] / m[predicted] for _, m in found if m[predicted] > 0]
    return max(statistics.median(ratios), MIN_CORRECTION) if ratios else 1.0
