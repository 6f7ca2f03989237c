"""Recovery of the real packaged SmolLM2-135M after removing 25% of its parameters: share of the
perplexity gap closed by LoRA, full fine-tuning and distillation from the dense teacher, each
under the same wall-time budget on 2 CPU threads, from a chosen starting point:

- ``--start bi-blocks`` (default): 25% of all parameters as whole blocks ranked by BI;
- ``--start ls-neurons``: depthcut's best training-free method (bench_quality: 25% of the
  non-embedding parameters as MLP neurons ranked by ls), once without and once with the ls
  refit, so the table says how much of the remaining gap recovery closes from each.

    python benchmarks/bench_recovery.py --start ls-neurons --minutes 4 \
        --runs "LoRA (r=16), LM loss" "LoRA (r=16), KD from dense"

Training text: the calibration articles of the packaged wiki text (last 10% held out for early
stopping); perplexity: the evaluation articles (never trained on), window 512, 8 windows.
gap closed = (ppl_pruned − ppl_recovered) / (ppl_pruned − ppl_dense).
"""

from __future__ import annotations

import argparse
import copy
import math

import torch

import depthcut as dc
from depthcut.eval.run import EvalSettings, perplexity_fn
from depthcut.recovery.config import RecoverConfig
from depthcut.recovery.run import recover, recovery_data

RUNS = {
    "LoRA (r=16), LM loss": {"method": "lora", "loss": "lm"},
    "full, LM loss": {"method": "full", "loss": "lm"},
    "full, KD from dense": {"method": "full", "loss": "kd"},
    "LoRA (r=16), KD from dense": {"method": "lora", "loss": "kd"},
}


STARTS = {
    # the published baseline: 25% of all parameters as whole blocks ranked by BI
    "bi-blocks": (dict(units=("block",), importance="bi"), dc.Budget(params=0.25), ("none",)),
    # depthcut's best training-free method (bench_quality), with and without its ls refit
    "ls-neurons": (
        dict(units=("neuron",), width_importance="ls"),
        dc.Budget(params=0.25, count="non_embedding", mode="nearest"),
        ("none", "ls"),
    ),
}


def starting_points(model, calib, start: str) -> dict:
    """{"<start>, repair <r>": (pruned model, plan)}: one score and plan, each repair applied to
    its own copy of the dense model."""
    kw, budget, repairs = STARTS[start]
    cfg = dc.PruneConfig(**kw, budget=budget)
    the_plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg, model)
    out = {}
    for method in repairs:
        work = copy.deepcopy(model)
        dc.repair(work, the_plan, calib, method, progress=False)
        out[f"{start}, repair {method}"] = (dc.apply(work, the_plan, inplace=True), the_plan)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per run")
    parser.add_argument("--runs", nargs="*", default=list(RUNS))
    parser.add_argument("--start", choices=list(STARTS), default="bi-blocks")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    calib = dc.calibration(tok, "wiki", n_samples=12, seq_len=256)
    ppl = perplexity_fn(tok, EvalSettings())
    dense = ppl(model)
    print(
        f"SmolLM2-135M (dequantized from Q4_1), ppl dense {dense:.2f} (window 512, 8 windows); "
        f"{args.minutes:g} min of training per run, 2 threads"
    )
    print(
        "| start | removed | ppl before | recovery | lr | steps (kept) | tokens seen | minutes "
        "| ppl | gap closed | log-ppl gap closed |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for start, (pruned, the_plan) in starting_points(model, calib, args.start).items():
        before = ppl(pruned)
        for name in args.runs:
            rcfg = RecoverConfig(**RUNS[name], max_steps=2000, max_minutes=args.minutes)
            data = recovery_data(tok, rcfg)
            out, hist = recover(pruned, tok, rcfg, teacher=model, progress=False, data=data)
            after = ppl(out)
            gap = (before - after) / (before - dense)
            log_gap = (math.log(before) - math.log(after)) / (math.log(before) - math.log(dense))
            tokens = hist["steps"] * rcfg.batch_size * rcfg.seq_len
            print(
                f"| {start} | {the_plan.fraction('non_embedding'):.1%} | {before:.2f} | {name} "
                f"| {rcfg.learning_rate:g} | {hist['steps']} ({hist['best_step']}) "
                f"| {tokens:,} | {hist['seconds'] / 60:.1f} | {after:.2f} | {gap:.0%} "
                f"| {log_gap:.0%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
