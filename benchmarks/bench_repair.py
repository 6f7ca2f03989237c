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
from results_file import provenance, show

CASES = {
    "blocks, BI (ShortGPT)": dict(units=("block",), importance="bi"),
    "blocks, Gromov span": dict(units=("block",), importance="gromov", strategy="contiguous"),
    "neurons, activation frequency": dict(
        units=("neuron",), neurons=0.25, width_importance="activation_frequency"
    ),
    "neurons, magnitude": dict(units=("neuron",), neurons=0.25, width_importance="magnitude"),
    "heads, magnitude": dict(units=("head",), heads=0.34, width_importance="magnitude"),
    "neurons, ls-aware (the default)": dict(units=("neuron",), width_importance="ls"),
}


def measure() -> dict:
    """Each plan's held-out perplexity without and with the ls refit, and the refit's cost."""
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    calib = dc.calibration(tok, "wiki", n_samples=32, seq_len=256)
    ids = evaluation_tokens(tok, "wiki", 8192)

    def ppl(m) -> float:
        return perplexity(m, ids, window=512, max_windows=8, progress=False).perplexity

    rows = []
    for name, kw in CASES.items():
        cfg = dc.PruneConfig(**kw, budget=dc.Budget(params=0.25, count="non_embedding"))
        plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg, model)
        plain = ppl(dc.apply(model, plan))
        work = copy.deepcopy(model)
        started = time.perf_counter()
        report = dc.repair(work, plan, calib, "ls", progress=False)
        seconds = time.perf_counter() - started
        rows.append(
            {"plan": name, "removed": plan.fraction("non_embedding"), "ppl_none": plain}
            | {"ppl_ls": ppl(dc.apply(work, plan, inplace=True)), "seconds": seconds}
            | {"forward_equivalents": report["forward_equivalents"]}
        )
    return {"dense_ppl": ppl(model), "calibration": "32 × 256", "rows": rows}


def table(data: dict) -> str:
    """Perplexity without and with the refit; the share of the log-perplexity gap it closes."""
    dense = data["dense_ppl"]
    lines = [
        f"{provenance(data)}: SmolLM2-135M, dense perplexity {dense:.2f}; calibration "
        f"{data['calibration']} tokens, 8 × 512 held-out tokens; 25% of the non-embedding "
        "parameters",
        "",
        "| plan | removed (non-emb.) | ppl none | ppl ls | gap closed | fit cost (fwd-eq.) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        gap, gap_ls = math.log(r["ppl_none"] / dense), math.log(r["ppl_ls"] / dense)
        closed = f"{1 - gap_ls / gap:.0%}" if gap > 0 else "—"
        lines.append(
            f"| {r['plan']} | {r['removed']:.1%} | {r['ppl_none']:.2f} | {r['ppl_ls']:.2f} "
            f"| {closed} | {r['forward_equivalents']:.1f} ({r['seconds']:.0f} s) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    show("repair", table, measure)
