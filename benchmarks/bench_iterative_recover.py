"""Iterative prune → recover (k = 3) vs one-shot prune → recover at the same final budget
(25% of SmolLM2-135M's params, BI blocks) and the same total number of training steps."""

from __future__ import annotations

import argparse
import time

import torch

import depthcut as dc
from depthcut.eval.run import EvalSettings, perplexity_fn
from depthcut.recovery.config import RecoverConfig
from depthcut.recovery.loop import prune_recover_loop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="full")
    parser.add_argument("--loss", default="kd")
    parser.add_argument("--total-steps", type=int, default=120)
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    calib = dc.calibration(tok, "wiki", n_samples=8, seq_len=128)
    cfg = dc.PruneConfig(units=("block",), importance="bi", budget=dc.Budget(params=0.25))
    ppl = perplexity_fn(tok, EvalSettings())
    print(
        f"SmolLM2-135M, 25% of params by BI blocks, recovery {args.method}/{args.loss}, "
        f"{args.total_steps} training steps in total (batch 4 × 128 tokens), 2 threads"
    )
    print("| schedule | params removed | ppl before last recovery | ppl final | minutes |")
    print("|---|---:|---:|---:|---:|")
    for k in (1, args.k):
        rcfg = RecoverConfig(
            method=args.method, loss=args.loss, max_steps=args.total_steps // k, patience=100
        )
        started = time.perf_counter()
        out, plans, history = prune_recover_loop(
            model, tok, cfg, calib, k, rcfg, ppl, progress=False
        )
        minutes = (time.perf_counter() - started) / 60
        removed = 1 - history[-1]["params_all"] / history[0]["params_all"]
        print(
            f"| {'one-shot' if k == 1 else f'iterative k={k}'} | {removed:.1%} "
            f"| {history[-1]['ppl_pruned']:.2f} | {history[-1]['ppl_recovered']:.2f} "
            f"| {minutes:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
