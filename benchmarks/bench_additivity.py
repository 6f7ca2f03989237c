"""Do the option table's costs predict what plans measure, family by family?

Builds SmolLM2-135M's option table (the first 12 of 16 calibration windows, runs of up to 4
blocks priced, ends protected, as ``bench_frontier.py``) and realises hand-made plans of one
family each: one block's MLP at 3/4, seven and all 28 free MLPs at 3/4, all at 1/2, one
block, three blocks, a run of four, one attention, five attentions. For each: the predicted
cost, the KL on the calibration's held-back last 4 windows (what the search checks on) and on
8 × 512 held-out tokens, held-out perplexity and the predicted decode time saved.

    python benchmarks/bench_additivity.py
"""

from __future__ import annotations

import time

import torch

import depthcut as dc
from bench_quality import held_out
from depthcut.data import evaluation_tokens
from depthcut.search.budgets import Budgets
from depthcut.search.frontier import held_back
from depthcut.search.joint import assemble, held_back_scores, realise, reference
from depthcut.search.library import OptionTable, build_table
from results_file import provenance, write


def plans(table: OptionTable) -> dict[str, dict[int, object]]:
    """{label: {block: option}} of the hand-made plans (other blocks keep)."""
    free = range(1, len(table.blocks) - 1)

    def named(i: int, name: str):
        return next(o for o in table.options(i) if o.name == name)

    def run(first: int, length: int) -> dict[int, object]:
        members = {i: table.runs(i) for i in range(first, first + length)}
        return {i: next(o for o in m if o.run == (first, length)) for i, m in members.items()}

    return {
        "mlp 3/4 in block 15": {15: named(15, "mlp 3/4")},
        "mlp 3/4 in 7 blocks": {i: named(i, "mlp 3/4") for i in range(4, 29, 4)},
        "mlp 3/4 in all 28": {i: named(i, "mlp 3/4") for i in free},
        "mlp 1/2 in all 28": {i: named(i, "mlp 1/2") for i in free},
        "block 15": {15: named(15, "block")},
        "blocks 5, 15, 25": {i: named(i, "block") for i in (5, 15, 25)},
        "run of 4 from block 13": run(13, 4),
        "attention 15": {15: named(15, "attention")},
        "attention in 5 blocks": {i: named(i, "attention") for i in (5, 10, 15, 20, 25)},
    }


def doc_table(results: dict) -> str:
    """The documentation's table: each hand-made plan's predicted cost against its measured
    KLs (held-back windows, held-out text) and held-out perplexity."""
    lines = [
        provenance(results),
        "",
        "| plan | predicted cost | held-back KL | held-out KL | held-out perplexity | "
        "decode time saved (predicted) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in results["plans"].items():
        lines.append(
            f"| {label} | {r['predicted']:.4f} | {r['held_back_kl']:.3f} | {r['kl']:.3f} | "
            f"{r['ppl']:.2f} | {r['saved_predicted']:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    calib, held = held_back(dc.calibration(tok, "wiki", n_samples=16, seq_len=256))
    ids = evaluation_tokens(tok, "wiki", 512 * 8)
    ref = reference(model, held)
    table = build_table(model, calib, progress=False, longest_run=4).protected(1, 1)
    rows = {}
    for label, changes in plans(table).items():
        chosen = [changes.get(i) or table.options(i)[0] for i in range(len(table.blocks))]
        plan = assemble(table, chosen, Budgets(params=0.5))
        started = time.perf_counter()
        pruned = realise(model, plan, calib)
        ppl, kl = held_out(pruned, model, ids, None)
        rows[label] = {
            "predicted": plan.run["search"]["predicted_cost"],
            "held_back_kl": held_back_scores(pruned, ref)[0],
            "kl": kl,
            "ppl": ppl,
            "saved_predicted": plan.run["latency"]["removed"] / plan.run["latency"]["total"],
            "seconds": time.perf_counter() - started,
        }
        print(label, rows[label], flush=True)
    write("additivity_smollm2", {"table": table.cost, "plans": rows})


if __name__ == "__main__":
    main()
