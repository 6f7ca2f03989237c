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
    return dc.PruneConfig(**METHODS[method], budget=dc.Budget(params=budget))


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


def scoring_cost(model, calib) -> dict:
    cfg = cfg_of("fine, Alg. 8 interleave", 0.4)
    started = time.perf_counter()
    scores = dc.score(model, cfg, calib, progress=False)
    seconds = time.perf_counter() - started
    n = len(scores.units)
    sample = [u.path for u in scores.units[4:10]]
    naive = naive_seconds_per_unit(model, calib, sample) * n
    fe = scores.cost["forward_equivalents"]
    print(f"## 1. Scoring cost ({n} fine units, {len(calib.batches())} calibration batches)\n")
    print("| scoring | forward-equivalents | wall (s) |")
    print("|---|---:|---:|")
    print(f"| Eq. 3.11, block-input cache + Taylor gradient pass | {fe:.2f} | {seconds:.1f} |")
    print(f"| naive full-model re-run per unit (est. from 6 units) | {n} | {naive:.1f} |")
    print(f"\ncached / naive: {fe / n:.3f} of the forwards, {seconds / naive:.3f} of the time\n")
    return {"scores": scores}


def speedups(model, scores) -> None:
    print("## 2. Speedup vs proportional (2 threads, medians of 5 interleaved runs)\n")
    models, ideal = {"dense": model}, {}
    for budget in (0.2, 0.4):
        cfg = cfg_of("fine, Alg. 8 interleave", budget)
        pruned = dc.apply(model, dc.plan(scores, cfg, model))
        name = f"fine {budget:.0%}"
        models[name] = pruned
        ideal[name] = compute_params(model) / compute_params(pruned)
    res = measure_many(models, lengths=(256,), batches=(1, 8), new_tokens=32, repeats=5, threads=2)
    d = res["dense"]
    print("| model | proportional | prefill 256 | % | decode b1 | % | decode b8 | % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in res.items():
        if name == "dense":
            continue
        pre = d.prefill_ms[256] / r.prefill_ms[256]
        b1, b8 = r.decode_tps[1] / d.decode_tps[1], r.decode_tps[8] / d.decode_tps[8]
        i = ideal[name]
        print(
            f"| {name} | {i:.3f}× | {pre:.3f}× | {pre / i:.0%} | {b1:.3f}× | {b1 / i:.0%} "
            f"| {b8:.3f}× | {b8 / i:.0%} |"
        )
    print()


def tradeoff(model, calib, ids, fine_scores) -> None:
    print("## 3. Perplexity vs parameters removed (no recovery)\n")
    print(f"dense: {ppl(model, ids):.2f}\n")
    print("| method | " + " | ".join(f"{b:.0%}" for b in BUDGETS) + " |")
    print("|---|" + "---:|" * len(BUDGETS))
    for method in METHODS:
        if method == "fine, Alg. 8 interleave":
            scores = fine_scores
        else:
            scores = dc.score(model, cfg_of(method, max(BUDGETS)), calib, progress=False)
        cells = []
        for budget in BUDGETS:
            plan = dc.plan(scores, cfg_of(method, budget), model)
            cells.append(f"{ppl(dc.apply(model, plan), ids):.1f} ({plan.fraction():.0%})")
        print(f"| {method} | " + " | ".join(cells) + " |", flush=True)


def orders(model, ids, scores) -> None:
    from depthcut.api import ordering_ablation

    print("\n## 4. Ordering ablation (Algorithm 8, angular, 20% of params)\n")
    print("| order | removed | perplexity |")
    print("|---|---:|---:|")
    result = ordering_ablation(
        model, scores, cfg_of("fine, Alg. 8 interleave", 0.2), lambda m: ppl(m, ids)
    )
    for order, r in result.items():
        print(f"| {order} | {r['fraction']:.1%} | {r['value']:.1f} |")


def main() -> None:
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    calib = dc.calibration(tok, "wiki", n_samples=8, seq_len=128)
    ids = evaluation_tokens(tok, "wiki", 8 * 512 + 1)
    print("SmolLM2-135M, calibration 8×128 wiki tokens, perplexity 8×512 held-out tokens\n")
    scores = scoring_cost(model, calib)["scores"]
    speedups(model, scores)
    tradeoff(model, calib, ids, scores)
    orders(model, ids, scores)


if __name__ == "__main__":
    main()
