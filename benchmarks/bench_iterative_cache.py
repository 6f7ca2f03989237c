"""Iterative greedy selection: block-input cache vs a naive full-model re-run per candidate.

Both select on the real packaged SmolLM2-135M; the script checks they pick the same units
and prints the cost of each in full-forward equivalents and wall time, measured in one run.
"""

from __future__ import annotations

import time

import torch

import depthcut as dc
from depthcut.calibrate import BlockCache
from depthcut.graph.structure import discover_structure
from depthcut.importance.reference import NaiveScorer
from depthcut.importance.registry import get_importance
from depthcut.importance.run import greedy_sequence
from depthcut.methods.depth.planner import unit_pool
from depthcut.planning.select import budget_target
from depthcut.scores import Scores
from depthcut.units.discover import discover_units


def main() -> None:
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    calib = dc.calibration(tok, "wiki", n_samples=4, seq_len=64)
    structure = discover_structure(model)
    print(
        "| metric | units | selected (same?) | cached FE | naive FE | FE ratio "
        "| cached s | naive s | time ratio |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for metric, units, budget in (
        ("bi", ("block",), 0.05),
        ("kl", ("block",), 0.05),
        ("kl", ("attention", "mlp"), 0.02),
    ):
        cfg = dc.PruneConfig(
            units=units, importance=metric, strategy="iterative", budget=dc.Budget(params=budget)
        )
        all_units = discover_units(model, structure, units)
        from depthcut.api import describe

        info = describe(model, structure)
        scores = Scores(metric, all_units, {}, info, cfg.to_dict())
        pool, target = unit_pool(scores, cfg), budget_target(info, cfg)
        start = time.perf_counter()
        cache = BlockCache(model, structure, calib, progress=False)
        seq = greedy_sequence(cache, get_importance(metric)(), pool, target, progress=False)
        cached_s, cached_fe = time.perf_counter() - start, cache.forward_equivalents
        start = time.perf_counter()
        naive = NaiveScorer(model, structure, calib)
        order = naive.greedy(metric, pool, target)
        naive_s = time.perf_counter() - start
        picked = [s["unit"] for s in seq]
        same = "yes" if picked == order else f"NO: naive {order}"
        print(
            f"| {metric} | {'+'.join(units)} | {', '.join(picked)} ({same}) "
            f"| {cached_fe:.1f} | {naive.forwards} | {naive.forwards / cached_fe:.1f}x "
            f"| {cached_s:.1f} | {naive_s:.1f} | {naive_s / cached_s:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
