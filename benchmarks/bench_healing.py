"""Does fine-grained depth pruning beat block removal *after healing*? (the thesis' claim on
Llama-2; without training it collapses on the real models here). On the packaged SmolLM2-135M,
25% of the non-embedding parameters removed by ShortGPT (blocks by BI), the thesis'
Algorithm 8 (fine units, interleaved, with and without the fine ls refit) and depthcut's default
(ls-aware neurons + ls refit), then each healed by the same recovery: LoRA r = 16 with
distillation from the dense model's stored top-64 targets, a fixed number of steps of 4 × 128
tokens.

    python benchmarks/bench_healing.py --steps 90

Columns: parameters removed, held-out perplexity (8 × 512 tokens) after pruning, after the
repair and after recovery, KL to the dense model after recovery, the share of the log-perplexity
gap the recovery closed, and the decode speed-up at batch 1 (PyTorch, 2 threads, dense and
pruned interleaved). Writes results/healing_smollm2.json."""

from __future__ import annotations

import argparse
import json

import torch

import depthcut as dc
from bench_pipeline import log_gap_closed, recovery_config
from bench_quality import METHODS, WINDOW, WINDOWS, config, held_out, prune
from depthcut.data import evaluation_tokens
from depthcut.eval.run import param_counts
from depthcut.search.joint import decode_ratio
from results_file import write

HEALED = (
    "ShortGPT (BI blocks)",
    "thesis Algorithm 8 (fine, interleave)",
    "thesis Algorithm 8 + ls",
    "depthcut neurons (ls-aware) + ls",
)
THREADS = 2


def pruned_pair(model, name: str, calib) -> tuple:
    """(unrepaired, repaired, removed share of the non-embedding parameters) of one method
    (``bench_quality.prune``: scores shared by methods that differ in their repair only)."""
    kw, repair = METHODS[name]
    repaired, plan, _, _ = prune(model, calib, config(kw, 0.25, repair))
    pruned = repaired if repair == "none" else dc.apply(model, plan)
    dense = param_counts(model)["params_non_embedding"]
    removed = 1 - param_counts(pruned)["params_non_embedding"] / dense
    return pruned, repaired, removed


def heal(model, tok, name: str, calib, ids, steps: int) -> dict:
    """One method: pruned → repaired → recovered, measured."""
    pruned, repaired, removed = pruned_pair(model, name, calib)
    cfg = recovery_config(steps)
    recovered, history = dc.recover(repaired, tok, cfg, teacher=model, progress=False)
    row = {"removed": removed}
    for key, m in (("pruned", pruned), ("repaired", repaired), ("recovered", recovered)):
        row[f"ppl_{key}"], row[f"kl_{key}"] = held_out(m, model, ids, None)
    row["recovery"] = {k: history[k] for k in ("steps", "best_step", "seconds", "stopped")}
    seconds_ratio, row["other_cpu"] = decode_ratio(model, recovered)
    row["decode_speedup"] = 1 / seconds_ratio
    return row


def doc_table(results: dict) -> str:
    """The documentation's table, from the results file."""
    dense = results["dense_ppl"]
    lines = [
        f"`{results['command']}` ({results['date']}, commit {results['commit']}, "
        f"{results['hardware']['cores']}-core CPU, {THREADS} threads); dense perplexity "
        f"{dense:.2f}",
        "",
        "| method | removed | ppl pruned | repaired | recovered | KL recovered "
        "| gap closed by recovery | decode ×dense |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["rows"].items():
        closed = log_gap_closed(r["ppl_repaired"], r["ppl_recovered"], dense)
        lines.append(
            f"| {name} | {r['removed']:.1%} | {r['ppl_pruned']:.2f} | {r['ppl_repaired']:.2f} "
            f"| {r['ppl_recovered']:.2f} | {r['kl_recovered']:.3f} | {closed:.0%} "
            f"| {r['decode_speedup']:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=90, help="recovery steps (4 × 128 tokens)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    model, tok = dc.load_model("smollm2-135m")
    ids = evaluation_tokens(tok, "wiki", WINDOW * WINDOWS)
    calib = dc.calibration(tok, "wiki", n_samples=12, seq_len=256)
    rows = {}
    for name in HEALED:
        rows[name] = heal(model, tok, name, calib, ids, args.steps)
        print(name, json.dumps(rows[name]), flush=True)
    dense_ppl, _ = held_out(model, model, ids, None)
    path = write("healing_smollm2", {"model": "smollm2-135m", "dense_ppl": dense_ppl, "rows": rows})
    print(doc_table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
