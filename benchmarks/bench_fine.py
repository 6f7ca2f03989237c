"""Fine-grained depth pruning (thesis Chapter 3) on the real packaged SmolLM2-135M.

1. Scoring cost of all 120 fine units with Eq. 3.11 (block-input cache + one gradient pass
   for the channel Taylor scores) in full-forward equivalents and wall time, vs a naive
   full-model re-run per unit (measured on a sample of units, scaled to all of them).
2. Prefill / decode speedup of fine-pruned models vs the proportional ideal
   (compute parameters before / after: blocks + LM head), measured interleaved with dense.
3. Perplexity trade-off: fine (Algorithm 8 interleave, unified, iterative re-scoring, and the
   final-logit KL ablation) vs coarse blocks (BI) vs sublayers (angular) at 10/20/30/40% of
   all parameters removed.
4. Ordering ablation (thesis Table 4.5) at 20%: ascending vs descending vs random.
"""

from __future__ import annotations

import time

import torch

import depthcut as dc
from depthcut.data import evaluation_tokens
from depthcut.eval.latency import measure_many
from depthcut.eval.perplexity import perplexity
from results_file import FLAG_NOTE, flag, provenance, show

BUDGETS = (0.1, 0.2, 0.3, 0.4)
METHODS = {
    "blocks (BI)": {"units": ("block",), "importance": "bi", "strategy": "ranked"},
    "sublayers (angular)": {"units": ("attention", "mlp"), "importance": "angular"},
    "fine, Alg. 8 interleave": {
        "units": ("fine",),
        "importance": "angular",
        "strategy": "interleave",
    },
    "fine, unified": {"units": ("fine",), "importance": "angular", "strategy": "unified"},
    "fine, iterative": {"units": ("fine",), "importance": "angular", "strategy": "iterative"},
    "fine, Alg. 8, final-logit KL": {
        "units": ("fine",),
        "importance": "kl",
        "strategy": "interleave",
    },
}


def cfg_of(method: str, budget: float) -> dc.PruneConfig:
    """No repair: this benchmark measures the selections themselves."""
    return dc.PruneConfig(**METHODS[method], budget=dc.Budget(params=budget), repair="none")


def ppl(model, ids) -> float:
    return perplexity(model, ids, window=512, max_windows=8, progress=False).perplexity


def compute_params(model) -> int:
    blocks = sum(p.numel() for p in model.model.layers.parameters())
    return blocks + model.lm_head.weight.numel()


def naive_seconds_per_unit(model, calib, units: list[str]) -> float:
    """Wall time of a full forward over the calibration set with one unit pruned, per unit
    (the surgery itself is not timed: both ways pay for it)."""
    seconds = 0.0
    for path in units:
        pruned = dc.apply(model, dc.plan_units(model, [path]))
        started = time.perf_counter()
        with torch.no_grad():
            for batch in calib.batches():
                pruned(**batch, use_cache=False)
        seconds += time.perf_counter() - started
    return seconds / len(units)


def scoring_cost(model, calib) -> tuple[dc.Scores, dict]:
    """The fine scores, and their cost beside the naive route's (estimated from 6 units)."""
    cfg = cfg_of("fine, Alg. 8 interleave", 0.4)
    started = time.perf_counter()
    scores = dc.score(model, cfg, calib, progress=False)
    seconds = time.perf_counter() - started
    n = len(scores.units)
    sample = [u.path for u in scores.units[4:10]]
    naive = naive_seconds_per_unit(model, calib, sample) * n
    fe = scores.cost["forward_equivalents"]
    cost = {"units": n, "batches": len(calib.batches()), "fe": fe, "seconds": seconds}
    return scores, cost | {"naive_seconds": naive, "naive_sample": len(sample)}


def speedups(model, scores) -> dict:
    """Fine plans at 20% and 40%, timed interleaved with dense, and their proportional ideal."""
    models, ideal = {"dense": model}, {}
    for budget in (0.2, 0.4):
        cfg = cfg_of("fine, Alg. 8 interleave", budget)
        pruned = dc.apply(model, dc.plan(scores, cfg, model))
        name = f"fine {budget:.0%}"
        models[name] = pruned
        ideal[name] = compute_params(model) / compute_params(pruned)
    res = measure_many(models, lengths=(256,), batches=(1, 8), new_tokens=32, repeats=5, threads=2)
    return {"ideal": ideal, "latency": {name: r.to_dict() for name, r in res.items()}}


def tradeoff(model, calib, ids, fine_scores) -> dict:
    """{method: {budget: (perplexity, share removed)}}."""
    out = {}
    for method in METHODS:
        if method == "fine, Alg. 8 interleave":
            scores = fine_scores
        else:
            scores = dc.score(model, cfg_of(method, max(BUDGETS)), calib, progress=False)
        out[method] = {}
        for budget in BUDGETS:
            plan = dc.plan(scores, cfg_of(method, budget), model)
            out[method][str(budget)] = [ppl(dc.apply(model, plan), ids), plan.fraction()]
    return out


def orders(model, ids, scores) -> dict:
    """Ascending, descending and random order of Algorithm 8 at 20% of the parameters."""
    from depthcut.api import ordering_ablation

    result = ordering_ablation(
        model, scores, cfg_of("fine, Alg. 8 interleave", 0.2), lambda m: ppl(m, ids)
    )
    return {order: [r["value"], r["fraction"]] for order, r in result.items()}


def measure() -> dict:
    """All four parts on SmolLM2-135M (calibration 8 × 128, perplexity on 8 × 512 tokens)."""
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    calib = dc.calibration(tok, "wiki", n_samples=8, seq_len=128)
    ids = evaluation_tokens(tok, "wiki", 8 * 512 + 1)
    scores, cost = scoring_cost(model, calib)
    return {
        "dense_ppl": ppl(model, ids),
        "cost": cost,
        "speedup": speedups(model, scores),
        "tradeoff": tradeoff(model, calib, ids, scores),
        "orders": orders(model, ids, scores),
    }


def cost_table(data: dict) -> str:
    """Part 1: scoring every fine unit from the block-input cache vs a naive re-run per unit."""
    c = data["cost"]
    return "\n".join(
        [
            f"{provenance(data)}: SmolLM2-135M, {c['units']} fine units, calibration 8 × 128 "
            f"tokens ({c['batches']} batches)",
            "",
            "| scoring | forward-equivalents | wall (s) |",
            "|---|---:|---:|",
            f"| Eq. 3.11, block-input cache + Taylor gradient pass | {c['fe']:.2f} "
            f"| {c['seconds']:.1f} |",
            f"| naive full-model re-run per unit (estimated from {c['naive_sample']} units) "
            f"| {c['units']} | {c['naive_seconds']:.1f} |",
        ]
    )


def speedup_table(data: dict) -> str:
    """Part 2: measured speed-ups of fine plans as a share of the proportional ideal."""
    lat, ideal = data["speedup"]["latency"], data["speedup"]["ideal"]
    d = lat["dense"]
    lines = [
        f"{provenance(data)}: medians of 5 interleaved runs; proportional = compute parameters "
        "(blocks + LM head) dense ÷ pruned",
        "",
        "| model | proportional | prefill 256 | % | decode b1 | % | decode b8 | % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    flagged = False
    for name, i in ideal.items():
        r = lat[name]
        w = flag(r) or flag(d)
        flagged = flagged or bool(w)
        pre = d["prefill_ms"]["256"] / r["prefill_ms"]["256"]
        b1 = r["decode_tps"]["1"] / d["decode_tps"]["1"]
        b8 = r["decode_tps"]["8"] / d["decode_tps"]["8"]
        lines.append(
            f"| {name} | {i:.3f}× | {pre:.3f}×{w} | {pre / i:.0%} | {b1:.3f}×{w} | {b1 / i:.0%} "
            f"| {b8:.3f}×{w} | {b8 / i:.0%} |"
        )
    return "\n".join(lines + ([f"\n{FLAG_NOTE}"] if flagged else []))


def tradeoff_table(data: dict) -> str:
    """Part 3: perplexity (share of all parameters removed) per method and budget."""
    grid = data["tradeoff"]
    budgets = list(next(iter(grid.values())))
    lines = [
        f"{provenance(data)}: no repair, no recovery; dense perplexity {data['dense_ppl']:.2f}",
        "",
        "| method | " + " | ".join(f"{float(b):.0%}" for b in budgets) + " |",
        "|---|" + "---:|" * len(budgets),
    ]
    for method, cells in grid.items():
        shown = [f"{cells[b][0]:.1f} ({cells[b][1]:.0%})" for b in budgets]
        lines.append(f"| {method} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def orders_table(data: dict) -> str:
    """Part 4: the ordering ablation."""
    lines = [
        f"{provenance(data)}: Algorithm 8, angular, 20% of the parameters",
        "",
        "| order | removed | perplexity |",
        "|---|---:|---:|",
    ]
    for order, (value, fraction) in data["orders"].items():
        lines.append(f"| {order} | {fraction:.1%} | {value:.1f} |")
    return "\n".join(lines)


def table(data: dict) -> str:
    """All four parts."""
    parts = (cost_table, speedup_table, tradeoff_table, orders_table)
    return "\n\n".join(part(data) for part in parts)


if __name__ == "__main__":
    show("fine", table, measure)
