"""Least-squares repair (--repair ls) on the packaged SmolLM2-135M: held-out perplexity with
and without the refit, for the same plans, one run (calibration: 32 × 256 tokens of the wiki
calibration articles; evaluation: 8 × 512 tokens of the held-out articles).

gap = log ppl − log ppl(dense): the fraction of the gap the repair closes is 1 − gap_ls / gap.
"""

from __future__ import annotations

import copy
import math
import time

import torch

import depthcut as dc
from depthcut.data import evaluation_tokens
from depthcut.eval.perplexity import perplexity

CASES = {
    "blocks, BI (ShortGPT)": dict(units=("block",), importance="bi"),
    "blocks, Gromov span": dict(units=("block",), importance="gromov", strategy="contiguous"),
    "neurons, activation frequency": dict(
        units=("neuron",), neurons=0.25, width_importance="activation_frequency"
    ),
    "neurons, magnitude": dict(units=("neuron",), neurons=0.25, width_importance="magnitude"),
    "heads, magnitude": dict(units=("head",), heads=0.34, width_importance="magnitude"),
}


def main() -> None:
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    calib = dc.calibration(tok, "wiki", n_samples=32, seq_len=256)
    ids = evaluation_tokens(tok, "wiki", 8192)

    def ppl(m) -> float:
        return perplexity(m, ids, window=512, max_windows=8, progress=False).perplexity

    dense = ppl(model)
    print(f"dense perplexity {dense:.2f}")
    print("| plan | removed (non-emb.) | ppl none | ppl ls | gap closed | fit cost (fwd-eq.) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, kw in CASES.items():
        cfg = dc.PruneConfig(**kw, budget=dc.Budget(params=0.25, count="non_embedding"))
        plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg, model)
        plain = ppl(dc.apply(model, plan))
        work = copy.deepcopy(model)
        started = time.perf_counter()
        report = dc.repair(work, plan, calib, progress=False)
        seconds = time.perf_counter() - started
        repaired = ppl(dc.apply(work, plan, inplace=True))
        gap, gap_ls = math.log(plain / dense), math.log(repaired / dense)
        closed = 1 - gap_ls / gap if gap > 0 else float("nan")
        print(
            f"| {name} | {plan.fraction('non_embedding'):.1%} | {plain:.2f} | {repaired:.2f} "
            f"| {closed:.0%} | {report['forward_equivalents']:.1f} ({seconds:.0f} s) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
