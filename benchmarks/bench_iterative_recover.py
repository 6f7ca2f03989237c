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
from results_file import provenance, show


def measure() -> dict:
    """One-shot and k-round schedules to the same budget with the same total training steps."""
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
    rows = []
    for k in (1, args.k):
        rcfg = RecoverConfig(
            method=args.method, loss=args.loss, max_steps=args.total_steps // k, patience=100
        )
        started = time.perf_counter()
        _, _, history = prune_recover_loop(model, tok, cfg, calib, k, rcfg, ppl, progress=False)
        rounds = [[h["ppl_pruned"], h["ppl_recovered"]] for h in history[1:]]
        removed = 1 - history[-1]["params_all"] / history[0]["params_all"]
        minutes = (time.perf_counter() - started) / 60
        rows.append({"k": k, "removed": removed, "rounds": rounds, "minutes": minutes})
    settings = {"method": args.method, "loss": args.loss, "total_steps": args.total_steps}
    return settings | {"dense_ppl": ppl(model), "batch": rcfg.batch_size, "rows": rows}


def table(data: dict) -> str:
    """Each schedule's perplexity before its last recovery and at the end; every round."""
    lines = [
        f"{provenance(data)}: SmolLM2-135M, 25% of the parameters as blocks by BI, recovery "
        f"{data['method']} / {data['loss']}, {data['total_steps']} training steps in total "
        f"(batch {data['batch']}); dense perplexity {data['dense_ppl']:.2f}",
        "",
        "| schedule | params removed | ppl before last recovery | ppl final | rounds: pruned → "
        "recovered | minutes |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in data["rows"]:
        name = "one-shot" if r["k"] == 1 else f"iterative k={r['k']}"
        rounds = ", ".join(f"{a:.2f} → {b:.2f}" for a, b in r["rounds"])
        lines.append(
            f"| {name} | {r['removed']:.1%} | {r['rounds'][-1][0]:.2f} | {r['rounds'][-1][1]:.2f} "
            f"| {rounds} | {r['minutes']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    show("iterative_recover", table, measure)
