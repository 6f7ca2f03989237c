"""Recovery on top of the repair: the best training-free plan of ``bench_quality.py`` at 25% of
the non-embedding parameters of the packaged SmolLM2-135M, recovered (LoRA r=16, LM loss and KD
from the dense teacher, the same wall-time budget each) from the unrepaired and from the
``--repair ls`` model; how much of the remaining gap each closes, in one run.

Calibration (plan and repair): 12 × 256 tokens of the wiki calibration articles; training text:
the calibration articles (last 10% held out for early stopping); perplexity: the evaluation
articles (never trained on), window 512, 8 windows. gap = log ppl − log ppl(dense).
"""

from __future__ import annotations

import argparse
import copy
import math

import torch

import depthcut as dc
from depthcut.eval.run import EvalSettings, perplexity_fn
from depthcut.recover.config import RecoverConfig
from depthcut.recover.run import recover, recovery_data

PLAN = dict(
    units=("neuron",),
    width_importance="activation_frequency",
    budget=dc.Budget(params=0.25, count="non_embedding"),
)
RUNS = {"LoRA (r=16), LM loss": "lm", "LoRA (r=16), KD from dense": "kd"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per run")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    calib = dc.calibration(tok, "wiki", n_samples=12, seq_len=256)
    cfg = dc.PruneConfig(**PLAN)
    plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg, model)
    repaired = copy.deepcopy(model)
    dc.repair(repaired, plan, calib, progress=False)
    starts = {"none": dc.apply(model, plan), "ls": dc.apply(repaired, plan, inplace=True)}
    ppl = perplexity_fn(tok, EvalSettings())
    dense = ppl(model)
    print(
        f"neurons by activation frequency, {plan.fraction('non_embedding'):.1%} of non-embedding "
        f"params; dense ppl {dense:.2f}; {args.minutes:g} min of training per run, 2 threads\n"
    )
    print("| start | recovery | steps | ppl before | ppl after | gap closed (log-ppl) |")
    print("|---|---|---:|---:|---:|---:|")
    for start, pruned in starts.items():
        before = ppl(pruned)
        for name, loss in RUNS.items():
            rcfg = RecoverConfig(method="lora", loss=loss, max_steps=2000, max_minutes=args.minutes)
            data = recovery_data(tok, rcfg)
            out, hist = recover(pruned, tok, rcfg, teacher=model, progress=False, data=data)
            after = ppl(out)
            closed = 1 - math.log(after / dense) / math.log(before / dense)
            print(
                f"| {start} | {name} | {hist['steps']} | {before:.2f} | {after:.2f} "
                f"| {closed:.0%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
