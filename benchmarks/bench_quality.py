"""Side by side against the published training-free methods, on the packaged SmolLM2-135M, in one
run: the same calibration text (12 × 256 tokens of the wiki calibration articles) for every
method and every repair, the same held-out text (8 × 512 tokens of other articles) for every
score. Budgets are fractions of the non-embedding parameters, ``--budget-mode nearest``.

Columns: parameters actually removed; held-out perplexity; gap = log ppl − log ppl(dense) as a
multiple of ShortGPT's gap at the same budget; KL(dense ‖ pruned) of the next-token
distribution on the held-out text; PIQA and ARC-easy accuracy (first ``--limit`` items); the
share of greedy generations that loop; the selection's cost in forward-equivalents of the
calibration set; then decode tokens/s ÷ dense (batch 1, all models measured interleaved).

    python benchmarks/bench_quality.py --budgets 0.25 --limit 50

The greedy sublayer methods (BlockPruner; depthcut's greedy ls-aware sublayers) re-score ≈ 50
candidates for ≈ 25 steps: several CPU-hours on this 2-core machine, so they run only when
named (``--methods BlockPruner``).
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

import depthcut as dc
from depthcut.data import evaluation_tokens
from depthcut.eval.generation import generate_samples
from depthcut.eval.latency import measure_many
from depthcut.eval.perplexity import perplexity
from depthcut.eval.zeroshot import zeroshot
from depthcut.importance import functional as F

WINDOW, WINDOWS = 512, 8
TASKS = ["piqa", "arc_easy"]
# name: (PruneConfig keywords, repair); a neuron plan's fraction follows the budget
METHODS = {
    "ShortGPT (BI blocks)": (dict(units=("block",), importance="bi"), "none"),
    "Gromov / UIDL (angular span)": (
        dict(units=("block",), importance="gromov", strategy="contiguous"),
        "none",
    ),
    "SLEB (greedy blocks, ppl)": (
        dict(units=("block",), importance="ppl", strategy="iterative"),
        "none",
    ),
    "BlockPruner (greedy sublayers, ppl)": (
        dict(units=("attention", "mlp"), importance="ppl", strategy="iterative"),
        "none",
    ),
    "ReplaceMe-LS (span + fold)": (
        dict(units=("block",), importance="gromov", strategy="contiguous"),
        "ls",
    ),
    "ShortGPT + ls": (dict(units=("block",), importance="bi"), "ls"),
    "depthcut ls-aware blocks + ls": (dict(units=("block",), importance="ls"), "ls"),
    "depthcut ls-aware greedy sublayers + ls": (
        dict(units=("block", "attention", "mlp"), importance="ls", strategy="iterative"),
        "ls",
    ),
    "depthcut neurons (act. freq.) + ls": (
        dict(units=("neuron",), width_importance="activation_frequency"),
        "ls",
    ),
    "thesis Algorithm 8 (fine, interleave)": (
        dict(units=("fine",), importance="angular", strategy="interleave"),
        "none",
    ),
}


def config(kw: dict, budget: float, repair: str) -> dc.PruneConfig:
    target = dc.Budget(params=budget, count="non_embedding", mode="nearest")
    return dc.PruneConfig(**kw, budget=target, repair=repair)


@torch.no_grad()
def held_out(model, dense, ids: torch.Tensor) -> tuple[float, float]:
    """(perplexity, mean KL(dense ‖ model) per next token) on the held-out windows."""
    ppl = perplexity(model, ids, window=WINDOW, max_windows=WINDOWS, progress=False).perplexity
    kl, count = 0.0, 0
    for w in range(WINDOWS):
        chunk = torch.tensor(ids[w * WINDOW : (w + 1) * WINDOW]).unsqueeze(0)
        ref = F.log_probs(dense(chunk).logits)
        kl += float(F.token_kl(ref, model(chunk).logits).sum())
        count += chunk.shape[1]
    return ppl, kl / count


def quality(model, dense, tok, ids, limit: int) -> dict:
    ppl, kl = held_out(model, dense, ids)
    acc = zeroshot(model, tok, TASKS, limit=limit)
    loops = [s.looping for s in generate_samples(model, tok)]
    return {
        "ppl": ppl,
        "kl": kl,
        **{t: acc[t]["acc"] for t in TASKS},
        "loops": sum(loops) / len(loops),
    }


def prune(model, calib, cfg: dc.PruneConfig) -> tuple:
    started = time.perf_counter()
    scores = dc.score(model, cfg, calib, progress=False)
    plan = dc.plan(scores, cfg, model)
    work = model
    if cfg.repair != "none":
        work = copy.deepcopy(model)
        dc.repair(work, plan, calib, cfg.repair, progress=False)
    pruned = dc.apply(work, plan, inplace=work is not model)
    cost = scores.cost.get("forward_equivalents", float("nan"))
    return pruned, plan, cost, time.perf_counter() - started


def row(name, plan, q, gap_ratio, cost, seconds) -> str:
    tasks = " | ".join(f"{q[t]:.3f}" for t in TASKS)
    spent = "—" if math.isnan(cost) else f"{cost:.1f}"
    return (
        f"| {name} | {plan.fraction('non_embedding'):.1%} | {q['ppl']:.2f} | "
        f"{gap_ratio:.2f} | {q['kl']:.3f} | {tasks} | {q['loops']:.0%} | "
        f"{spent} ({seconds:.0f} s) |"
    )


SLOW = ("BlockPruner (greedy sublayers, ppl)", "depthcut ls-aware greedy sublayers + ls")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", default="0.25")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--methods", default="", help="comma-separated prefixes (default all)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    model.eval()
    calib = dc.calibration(tok, "wiki", n_samples=12, seq_len=256)
    ids = evaluation_tokens(tok, "wiki", WINDOW * WINDOWS)
    dense_q = quality(model, model, tok, ids, args.limit)
    print(
        f"dense: perplexity {dense_q['ppl']:.2f}, "
        + ", ".join(f"{t} {dense_q[t]:.3f}" for t in TASKS)
        + f", loops {dense_q['loops']:.0%} (first {args.limit} items per task)\n",
        flush=True,
    )
    wanted = [p.strip() for p in args.methods.split(",") if p.strip()]
    methods = {
        k: v
        for k, v in METHODS.items()
        if (k.startswith(tuple(wanted)) if wanted else k not in SLOW)
    }
    for budget in [float(b) for b in args.budgets.split(",")]:
        print(f"### {budget:.0%} of non-embedding parameters\n")
        print(
            "| method | removed | ppl | gap ÷ ShortGPT's | KL | "
            + " | ".join(TASKS)
            + " | loops | selection cost (fwd-eq.) |"
        )
        print("|---|---:|---:|---:|---:|" + "---:|" * len(TASKS) + "---:|---:|")
        pruned, short_gap = {"dense": model}, None
        for name, (kw, repair) in methods.items():
            pruned[name], plan, cost, seconds = prune(model, calib, config(kw, budget, repair))
            q = quality(pruned[name], model, tok, ids, args.limit)
            gap = math.log(q["ppl"] / dense_q["ppl"])
            short_gap = short_gap or gap
            print(row(name, plan, q, gap / short_gap, cost, seconds), flush=True)
        lat = measure_many(pruned, lengths=(64,), batches=(1,), new_tokens=24, repeats=3)
        dense_tps = lat["dense"].decode_tps[1]
        print("\n| method | decode tokens/s, batch 1 | ×dense |\n|---|---:|---:|")
        for name, result in lat.items():
            tps = result.decode_tps[1]
            print(f"| {name} | {tps:.1f} | {tps / dense_tps:.2f} |")
        print(flush=True)


if __name__ == "__main__":
    main()
