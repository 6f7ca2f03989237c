"""How much of the default's gap a short recovery closes, by recipe, on the real packaged
SmolLM2-135M: the pipeline's starting point (the default at 25% of the non-embedding
parameters, kept widths rounded to 64, repaired by its ls refit), the same stored top-64
targets of the dense model, the same training windows (4 × 128 tokens per step), seed and
number of steps for every recipe: LoRA at two learning rates and ranks, and full fine-tuning.

    python benchmarks/bench_recovery_budget.py --steps 90

Other step counts write results/recovery_budget_STEPS.json
(``--steps 190 --recipes "LoRA r=16 at lr 1e-3,full FT at lr 1e-4"``: about 10 CPU-minutes
each).

Columns: held-out perplexity (8 × 512 evaluation tokens), the share of the log-perplexity gap
closed from the repaired and from the unrepaired model, the best step, and the training time:
wall seconds and the process's CPU seconds divided by its 2 threads (what the run would take
alone on 2 idle cores; wall time also counts anything else running). Writes
results/recovery_budget.json."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time

import torch

import depthcut as dc
from bench_pipeline import default_config, log_gap_closed, recovery_config
from depthcut.eval.run import EvalSettings, perplexity_fn
from depthcut.recovery.run import live_targets, recover, recovery_data
from results_file import RESULTS, provenance, write

THREADS = 2
RECIPES = {
    "LoRA r=16 at lr 2e-4": {"method": "lora", "lr": 2e-4},
    "LoRA r=16 at lr 1e-3": {"method": "lora", "lr": 1e-3},
    "LoRA r=64 at lr 1e-3": {"method": "lora", "lr": 1e-3, "lora_r": 64, "lora_alpha": 128},
    "full FT at lr 1e-4": {"method": "full", "lr": 1e-4},
}


def starting_point(model, tok) -> tuple:
    """(pruned, repaired): the pipeline's default plan, without and with its ls refit."""
    calib = dc.calibration(tok, "wiki", n_samples=12, seq_len=256)
    cfg = default_config(64)
    plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg, model)
    work = copy.deepcopy(model)
    dc.repair(work, plan, calib, "ls", progress=False)
    return dc.apply(model, plan), dc.apply(work, plan, inplace=True)


def timed_recovery(repaired, tok, cfg, teacher, data) -> tuple:
    """(recovered model, history, wall seconds, CPU seconds / threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    recovered, history = recover(repaired, tok, cfg, teacher, progress=False, data=data)
    return recovered, history, time.perf_counter() - wall, (time.process_time() - cpu) / THREADS


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=90, help="optimizer steps per recipe")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="which, comma-separated")
    parser.add_argument("--table", action="store_true", help="print the docs table and stop")
    args = parser.parse_args()
    unknown = [n for n in args.recipes.split(",") if n not in RECIPES]
    if unknown:
        raise SystemExit(f"--recipes: unknown {unknown}; choose from {list(RECIPES)}")
    return args


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(THREADS)
    model, tok = dc.load_model("smollm2-135m")
    ppl = perplexity_fn(tok, EvalSettings())
    pruned, repaired = starting_point(model, tok)
    base = recovery_config(args.steps)
    data = recovery_data(tok, base)
    teacher = live_targets(model, tok, data[0], base.teacher_topk, progress=False)
    start = {"dense": ppl(model), "pruned": ppl(pruned), "repaired": ppl(repaired)}
    rows = {}
    for name in args.recipes.split(","):
        cfg = dataclasses.replace(base, **RECIPES[name])
        recovered, history, wall, cpu = timed_recovery(repaired, tok, cfg, teacher, data)
        after = ppl(recovered)
        rows[name] = {
            "ppl": after,
            "gap_closed": log_gap_closed(start["repaired"], after, start["dense"]),
            "gap_closed_unrepaired": log_gap_closed(start["pruned"], after, start["dense"]),
            "best_step": history["best_step"],
            "wall_s": wall,
            "cpu_s_per_thread": cpu,
        }
    return {"steps": args.steps, "start": start, "rows": rows}


def table(data: dict) -> str:
    """Each recipe's perplexity, the gap it closed and its training time."""
    s = data["start"]
    lines = [
        f"{provenance(data)}: smollm2-135m, the default at 25% of the non-embedding parameters "
        f"(perplexity {s['pruned']:.2f}; repaired {s['repaired']:.2f}; dense {s['dense']:.2f}), "
        f"distilled from the dense model's stored top-64 targets, {data['steps']} steps of "
        "4 × 128 tokens each",
        "",
        "| recipe | held-out ppl | gap closed (from repaired) | from unrepaired | best step "
        "| CPU min / thread | wall min |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in data["rows"].items():
        lines.append(
            f"| {name} | {r['ppl']:.2f} | {r['gap_closed']:.0%} | "
            f"{r['gap_closed_unrepaired']:.0%} | {r['best_step']} | "
            f"{r['cpu_s_per_thread'] / 60:.1f} | {r['wall_s'] / 60:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """results/recovery_budget.json at 90 steps, recovery_budget_STEPS.json otherwise."""
    args = arguments()
    name = "recovery_budget" + ("" if args.steps == 90 else f"_{args.steps}")
    path = RESULTS / f"{name}.json" if args.table else write(name, measure(args))
    print(table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
