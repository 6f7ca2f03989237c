"""Sparse distillation on the real packaged SmolLM2-135M: recovery from the teacher's stored
top-k targets (k = 16, 64) against the live teacher's full 49,152-token distribution, at equal
optimizer steps, from the same pruned model (25% of all parameters as whole blocks ranked by BI),
the same training windows and seed, LoRA r = 16, 2 threads.

    python benchmarks/bench_sparse_kd.py --steps 50 --seq-len 128

Columns: held-out perplexity after recovery (evaluation articles, window 512, 8 windows), the
share of the log-perplexity gap closed, training seconds, the seconds spent computing the
stored targets, and their bytes on disk per training token. Writes results/sparse_kd.json."""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path

import torch

import depthcut as dc
from depthcut.eval.run import EvalSettings, perplexity_fn
from depthcut.recovery.config import RecoverConfig
from depthcut.recovery.run import recover, recovery_data
from depthcut.recovery.targets import compute_targets, fingerprint, load_targets
from results_file import RESULTS, write


def pruned_model(model, tok):
    """25% of all parameters as whole blocks ranked by BI, no repair (the published recipe)."""
    calib = dc.calibration(tok, "wiki", n_samples=12, seq_len=256)
    cfg = dc.PruneConfig(units=("block",), importance="bi", budget=dc.Budget(params=0.25))
    plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg, model)
    return dc.apply(copy.deepcopy(model), plan), plan


def stored_targets(model, tok, data, k: int, folder: Path) -> tuple:
    """The top-k targets written to disk and read back (what a run uses), and their cost."""
    began = time.perf_counter()
    meta = fingerprint(tok, data, k)
    path = compute_targets(model, data, k, meta, progress=False).save(folder / f"top{k}.st")
    seconds = time.perf_counter() - began
    return load_targets(path, meta), seconds, path.stat().st_size / data.input_ids.numel()


def doc_table(results: dict) -> str:
    """The documentation's table (docs/recovery.md), from the results file."""
    start = results["start"]
    lines = [
        f"`{results['command']}` ({results['date']}, commit {results['commit']}, "
        f"{results['hardware']['cores']}-core CPU): {results['model']}, {start['recipe']} "
        f"(perplexity {start['ppl']:.2f}; dense {results['dense_ppl']:.2f}), recovered by "
        f"{results['recovery']}, {results['rows'][0]['steps']} steps each.",
        "",
        "| teacher | held-out ppl | vs full KD | log-ppl gap closed | training s "
        "| targets s | bytes / token |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        size = f"{r['bytes_per_token']:.0f}" if r["bytes_per_token"] else "— (live)"
        lines.append(
            f"| {r['teacher']} | {r['ppl']:.2f} | {r['vs_full']:+.1%} | {r['log_gap_closed']:.0%} "
            f"| {r['train_seconds']:.0f} | {r['target_seconds']:.0f} | {size} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per training window")
    parser.add_argument("--ks", default="64,16", help="top-k sizes besides the full teacher")
    parser.add_argument("--table", action="store_true", help="print the docs table and stop")
    args = parser.parse_args()
    if args.table:
        print(doc_table(json.loads((RESULTS / "sparse_kd.json").read_text())))
        return
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    ppl = perplexity_fn(tok, EvalSettings())
    dense = ppl(model)
    pruned, plan = pruned_model(model, tok)
    before = ppl(pruned)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in [0, *(int(x) for x in args.ks.split(","))]:
            cfg = RecoverConfig(
                method="lora",
                loss="kd",
                teacher_topk=k,
                max_steps=args.steps,
                seq_len=args.seq_len,
                eval_every=10,
                patience=99,
            )
            data = recovery_data(tok, cfg)
            teacher, target_s, disk = model, 0.0, None
            if k:
                teacher, target_s, disk = stored_targets(model, tok, data[0], k, Path(tmp))
            out, hist = recover(pruned, tok, cfg, teacher=teacher, progress=False, data=data)
            after = ppl(out)
            gap = (math.log(before) - math.log(after)) / (math.log(before) - math.log(dense))
            rows.append(
                {
                    "teacher": f"top-{k}" if k else "full distribution (live)",
                    "k": k,
                    "ppl": after,
                    "log_gap_closed": gap,
                    "steps": hist["steps"],
                    "train_seconds": hist["seconds"],
                    "target_seconds": target_s,
                    "bytes_per_token": disk,
                }
            )
            print(rows[-1], flush=True)
    full = rows[0]["ppl"]
    for row in rows:
        row["vs_full"] = row["ppl"] / full - 1
    fields = {
        "model": "smollm2-135m",
        "start": {"recipe": "blocks by BI, 25% of all parameters", "ppl": before},
        "removed": plan.fraction("non_embedding"),
        "dense_ppl": dense,
        "recovery": f"LoRA r=16, lr 2e-4, batch 4 x {args.seq_len} tokens, seed 0",
        "rows": rows,
    }
    print(write("sparse_kd", fields))


if __name__ == "__main__":
    main()
