"""Which held-back text ranks the joint search's candidates as held-out text does?

The search re-measures its top-k plans on held-back calibration windows and keeps the one of
least KL. By default those are the calibration's last quarter: consecutive windows of the same
articles the repairs are fitted on. This benchmark builds one option table (SmolLM2-135M, the
first 12 of 16 calibration windows, as ``bench_frontier.py``), solves ``--k`` candidates per
latency budget from both pricings, refits each, and measures its KL on

* ``near``: the calibration's last 4 windows (what the search uses today),
* ``far``: 4 windows, one from each of 4 other calibration articles (from the end of the
  calibration split, far from the fitted text),
* ``far16``: 16 such windows,
* ``repeat``: the near windows, each its first token then its next half twice (an in-context
  copying probe: the dense model predicts a repeated half almost exactly, by attention),
* ``near+repeat``: the mean of the two,
* ``c4`` and ``code``: 4 calibration windows of the other packaged sources,
* ``heldout``: held-out perplexity and KL on 8 × 512 tokens of the evaluation articles (the
  start of the evaluation split: many short articles, templated one-line stubs such as
  ``X is a species of small sea snail …`` and bare titles among them),
* ``prose``: held-out KL on 8 × 512 tokens of the evaluation split's long articles only.

It reports, per held-back set, Spearman's ρ between its KL and each held-out KL over all
candidates, and per budget the held-out KL of the candidate it would keep.

    python benchmarks/bench_heldback.py --budgets 0.1,0.2,0.3 --k 6
"""

from __future__ import annotations

import argparse

import torch
from scipy.stats import spearmanr

import depthcut as dc
from bench_frontier import summary
from bench_joint_large import add_search_args, searched
from bench_quality import held_out, prose_tokens
from depthcut.data import CalibData, copying_windows, evaluation_tokens, pack_tokens, split_source
from depthcut.search.budgets import Budgets
from depthcut.search.frontier import held_back
from depthcut.search.joint import held_back_scores, portfolio, realise, reference, solve_plans
from depthcut.search.library import build_table
from results_file import provenance, write

SETS = ("near", "far", "far16", "repeat", "near+repeat", "c4", "code")
HELD_OUT = ("kl", "prose_kl")


def far_windows(tok, n: int, seq_len: int, bos_id: int | None) -> CalibData:
    """``n`` windows of ``seq_len`` tokens, each the start of another calibration article,
    taken from the end of the calibration split (the fitted windows are its start)."""
    ids: list[int] = []
    body = seq_len - (bos_id is not None)
    for article in reversed(split_source("wiki", "calibration")):
        tokens = tok(article + "\n\n", add_special_tokens=False)["input_ids"]
        if len(tokens) >= body:
            ids += tokens[:body]
        if len(ids) >= n * body:
            break
    return pack_tokens(ids, n, seq_len, 4, bos_id)


def candidates(model, table, calib, refs, held, budget: float, k: int, bos_id) -> list[dict]:
    rows = []
    for plan in solve_plans(table, Budgets(latency=budget), k=k, pricings=portfolio(table)):
        pruned = realise(model, plan, calib)
        row = {"pricing": plan.run["search"]["pricing"]}
        row["chose"] = summary(plan.run["search"]["options"])
        row["predicted"] = plan.run["latency"]["removed"] / plan.run["latency"]["total"]
        for name, ref in refs.items():
            row[name] = held_back_scores(pruned, ref)[0]
        row["near+repeat"] = (row["near"] + row["repeat"]) / 2
        row["ppl"], row["kl"] = held_out(pruned, model, held["kl"], bos_id)
        row["prose_ppl"], row["prose_kl"] = held_out(pruned, model, held["prose_kl"], bos_id)
        rows.append(row)
        print(f"latency {budget}: " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return rows


def verdicts(points: dict[str, list[dict]]) -> dict:
    """Per held-back set and held-out text: ρ with the held-out KL over every candidate, and
    per budget the held-out KL of the candidate it keeps; then the best held-out KLs."""
    rows = [r for p in points.values() for r in p]
    out: dict = {}
    for name in SETS:
        out[name] = {}
        for key in HELD_OUT:
            rho = spearmanr([r[name] for r in rows], [r[key] for r in rows]).statistic
            kept = {b: min(p, key=lambda r: r[name])[key] for b, p in points.items()}
            out[name][key] = {"spearman": float(rho), "kept": kept}
    out["best"] = {key: {b: min(r[key] for r in p) for b, p in points.items()} for key in HELD_OUT}
    return out


def doc_table(results: dict) -> str:
    """Every candidate's KL on each held-back set beside its held-out KLs and perplexity, then
    each set's Spearman ρ with each held-out KL and the held-out KL of what it keeps."""
    sets = [name for name in SETS if name in results["verdicts"]]
    lines = [
        f"`benchmarks/results/heldback_smollm2.json` ({provenance(results)})",
        "",
        "| decode time | pricing | chose | " + " | ".join(sets) + " | held-out KL (ppl) "
        "| prose KL (ppl) |",
        "|---|---|---|" + "---:|" * (len(sets) + 2),
    ]
    for budget, rows in results["points"].items():
        for r in rows:
            kls = " | ".join(f"{r[name]:.3f}" for name in sets)
            lines.append(
                f"| {float(budget):.0%} | {r['pricing']} | {r['chose']} | {kls} | "
                f"{r['kl']:.3f} ({r['ppl']:.1f}) | {r['prose_kl']:.3f} ({r['prose_ppl']:.1f}) |"
            )
    found = results["verdicts"]
    at = " / ".join(f"{float(b):.0%}" for b in found["best"]["kl"])
    lines += [
        "",
        "| held-back set | ρ with held-out KL | kept: held-out KL at "
        f"{at} | ρ with prose KL | kept: prose KL at {at} |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in sets:
        cells = []
        for key in HELD_OUT:
            v = found[name][key]
            kept = " / ".join(f"{kl:.3f}" for kl in v["kept"].values())
            cells += [f"{v['spearman']:.2f}", kept]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    best = [" / ".join(f"{kl:.3f}" for kl in found["best"][key].values()) for key in HELD_OUT]
    lines.append(f"| (the held-out best) | | {best[0]} | | {best[1]} |")
    return "\n".join(lines)


def check_sets(tok, near: CalibData, bos_id: int | None) -> dict[str, CalibData]:
    """Every held-back set but ``near+repeat`` (a mean of two others)."""
    bos = bos_id is not None
    sets = {"near": near, "far": far_windows(tok, 4, 256, bos_id)}
    sets["far16"] = far_windows(tok, 16, 256, bos_id)
    sets["repeat"] = copying_windows(near)
    for source in ("c4", "code"):
        sets[source] = dc.calibration(tok, source, n_samples=4, seq_len=256, bos=bos)
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budgets", default="0.1,0.2,0.3")
    parser.add_argument("--k", type=int, default=6)
    add_search_args(parser)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tok = dc.load_model(args.model)
    bos_id = tok.bos_token_id if args.model.startswith("gemma") else None
    windows = dc.calibration(tok, "wiki", n_samples=16, seq_len=256, bos=bos_id is not None)
    calib, near = held_back(windows)
    refs = {name: reference(model, data) for name, data in check_sets(tok, near, bos_id).items()}
    held = {"kl": evaluation_tokens(tok, "wiki", 512 * 8), "prose_kl": prose_tokens(tok, 512 * 8)}
    table = searched(build_table(model, calib, progress=False), args)
    points = {
        b: candidates(model, table, calib, refs, held, float(b), args.k, bos_id)
        for b in args.budgets.split(",")
    }
    found = verdicts(points)
    print(found, flush=True)
    write(f"heldback_{args.model.split('-')[0]}", {"points": points, "verdicts": found})


if __name__ == "__main__":
    main()
