"""Recovery of the real packaged SmolLM2-135M after removing 25% of its parameters (BI blocks):
share of the perplexity gap closed by LoRA, full fine-tuning and distillation from the dense
teacher, each under the same wall-time budget on 2 CPU threads.

Training text: the calibration articles of the packaged wiki text (last 10% held out for early
stopping); perplexity: the evaluation articles (never trained on), window 512, 8 windows.
gap closed = (ppl_pruned − ppl_recovered) / (ppl_pruned − ppl_dense).
"""

from __future__ import annotations

import argparse
import math

import torch

import depthcut as dc
from depthcut.eval.run import EvalSettings, perplexity_fn
from depthcut.recover.config import RecoverConfig
from depthcut.recover.run import recover, recovery_data

RUNS = {
    "LoRA (r=16), LM loss": {"method": "lora", "loss": "lm"},
    "full, LM loss": {"method": "full", "loss": "lm"},
    "full, KD from dense": {"method": "full", "loss": "kd"},
    "LoRA (r=16), KD from dense": {"method": "lora", "loss": "kd"},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per run")
    parser.add_argument("--runs", nargs="*", default=list(RUNS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    calib = dc.calibration(tok, "wiki", n_samples=8, seq_len=128)
    cfg = dc.PruneConfig(units=("block",), importance="bi", budget=dc.Budget(params=0.25))
    pruned, plan, _ = dc.prune(model, cfg, calib, progress=False)
    ppl = perplexity_fn(tok, EvalSettings())
    dense, start = ppl(model), ppl(pruned)
    print(
        f"SmolLM2-135M (dequantized from Q4_1), {len(plan.removed_blocks)} of 30 blocks removed "
        f"by BI ({plan.fraction():.1%} of params); ppl dense {dense:.2f}, pruned {start:.2f} "
        f"(window 512, 8 windows); {args.minutes:g} min of training per run, 2 threads"
    )
    print(
        "| recovery | lr | steps (kept) | tokens seen | minutes | ppl | gap closed "
        "| log-ppl gap closed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.runs:
        rcfg = RecoverConfig(**RUNS[name], max_steps=2000, max_minutes=args.minutes)
        data = recovery_data(tok, rcfg)
        out, hist = recover(pruned, tok, rcfg, teacher=model, progress=False, data=data)
        after = ppl(out)
        gap = (start - after) / (start - dense)
        log_gap = (math.log(start) - math.log(after)) / (math.log(start) - math.log(dense))
        tokens = hist["steps"] * rcfg.batch_size * rcfg.seq_len
        print(
            f"| {name} | {rcfg.learning_rate:g} | {hist['steps']} ({hist['best_step']}) "
            f"| {tokens:,} | {hist['seconds'] / 60:.1f} | {after:.2f} | {gap:.0%} "
            f"| {log_gap:.0%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
