"""The joint search on a real model too large for the frontier benchmark: the option table's
cost (time, forward-equivalents, peak memory) and one searched point against the default.

The calibration is the one ``depthcut frontier`` chooses (sized for the widest refit, plus the
quarter held back for the search's measurements). The table is saved under ``BENCH_TMP`` (or
``--table`` reuses one, and the run adds its point to the results file's earlier points); the
point is searched with ``--k`` candidates and its pruned model evaluated on the default's
held-out text, so its perplexity compares with ``results/default.json``'s row for the model.
``--probe-from`` builds the table again (with today's option levels) reusing the probe's KLs of
a saved table on the same calibration, which skips the probe's runs.

    python benchmarks/bench_joint_large.py --model qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections import Counter
from pathlib import Path

import torch

from depthcut.config import AUTO, PruneConfig
from depthcut.eval.run import EvalSettings, param_counts, perplexity_fn
from depthcut.jobs.common import CalibSpec, ModelRef
from depthcut.search import joint
from depthcut.search.budgets import Budgets
from depthcut.search.frontier import held_back
from depthcut.search.library import PRICINGS, OptionTable, build_table
from results_file import RESULTS, commit, provenance, today, write


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def checkpoint_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def table_phase(model, fit, path: Path, probed: OptionTable | None = None) -> dict:
    started = time.perf_counter()
    table = build_table(model, fit, progress=True, probed=probed)
    table.save(path)
    seconds = time.perf_counter() - started
    fields = {"seconds": seconds, "peak_rss": peak_bytes(), "commit": commit()}
    fields |= table.cost | {"blocks": len(table.blocks), "steps": mlp_steps(table)}
    stats_file(path).write_text(json.dumps(fields, indent=1) + "\n")
    return fields


def mlp_steps(table: OptionTable) -> int:
    """The denominator of the table's MLP levels: 4 for quarters, 8 for eighths."""
    info = table.blocks[0]["mlp"]
    return round(info["size"] / min(k for k in info["levels"] if k > 0))


STEP_NAMES = {4: "quarters", 8: "eighths"}


def stats_file(table: Path) -> Path:
    """Where a table's build figures are kept beside it, for a later ``--table`` run."""
    return table.with_suffix(".stats.json")


def point_phase(model, tok, table, budgets: Budgets, fit, check, k: int, rounds: int) -> dict:
    """Search one point and evaluate the chosen plan's model: the last candidate realised when
    it is the chosen one (one candidate, one round), else the chosen plan realised again."""
    last: dict = {}
    realise = joint.realise

    def keep(model, plan, calib):
        last.update(plan=plan, model=realise(model, plan, calib))
        return last["model"]

    joint.realise = keep
    try:
        started = time.perf_counter()
        plan, report = joint.search(model, table, budgets, fit, check, k=k, rounds=rounds)
        seconds = time.perf_counter() - started
    finally:
        joint.realise = realise
    pruned = last["model"] if last["plan"] is plan else realise(model, plan, fit)
    before, after = param_counts(model), param_counts(pruned)
    return {
        "seconds": seconds,
        "rounds": len(report),
        "measured": plan.run["search"]["measured"],
        "options": plan.run["search"]["options"],
        "removed_non_embedding": 1 - after["params_non_embedding"] / before["params_non_embedding"],
        "ppl_after": perplexity_fn(tok, EvalSettings())(pruned),
        "peak_rss": peak_bytes(),
        "commit": commit(),
    }


def doc_table(results: dict, default: dict | None = None) -> str:
    """The documentation's table: the option table's cost and the searched point, beside the
    default's row for the same model (``results/default.json``)."""
    gb = results["checkpoint_bytes"]
    lines = [
        f"{provenance(results)}; calibration {results['calibration_windows']} × 256 "
        f"(a quarter held back for the search)",
        "",
        "| phase | wall | forward-equivalents | peak RSS ÷ float32 checkpoint | commit |",
        "|---|---:|---:|---:|---|",
    ]
    for t in tables(results):
        lines.append(
            f"| option table ({t['blocks']} blocks, MLP in {STEP_NAMES[t['steps']]}"
            f"{'; probe reused' if 'probe_reused' in t else ''}) | {t['seconds'] / 60:.0f} min "
            f"| {t['forward_equivalents']:.2f} | {t['peak_rss'] / gb:.2f} | {t['commit']} |"
        )
    points = results["points"].values()
    for p in points:
        lines.append(
            f"| search, {p['budget']}, {label(p)}, k={p['k']} "
            "(refit, timing, held-back KL; "
            f"{p['rounds']} round{'s' if p['rounds'] > 1 else ''}) "
            f"| {p['seconds'] / 60:.0f} min | | {p['peak_rss'] / gb:.2f} | {p['commit']} |"
        )
    lines += [
        "",
        "| plan | removed (non-embedding) | decode time saved: measured (predicted) "
        "| held-back KL | held-out perplexity | chosen per block |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for p in points:
        m = p["measured"]
        lines.append(
            f"| joint ({label(p)}), {p['budget']} "
            f"| {p['removed_non_embedding']:.1%} "
            f"| {m['saved']:.1%} ({m['predicted']:.1%}) | {m['kl']:.3f} | {p['ppl_after']:.2f} "
            f"| {summary(p['options'])} |"
        )
    row = next((r for r in (default or {}).get("rows", []) if r["model"] == results["model"]), None)
    if row and "ppl_after" in row:
        saved = f"{row['decode_saved']:.1%}" if "decode_saved" in row else ""
        lines.append(
            f"| default (`depthcut prune`, {row['date']}, {row['commit']}) "
            f"| {row['removed_non_embedding']:.1%} | {saved} | | {row['ppl_after']:.2f} | |"
        )
        lines.append(f"\nDense held-out perplexity {row['ppl_before']:.2f}.")
    return "\n".join(lines)


def label(point: dict) -> str:
    """``eighths`` or ``eighths, model-wide pricing``: a point's option levels and pricing."""
    steps = STEP_NAMES[point.get("steps", 4)]
    pricing = point.get("pricing", "block")
    out = steps if pricing == "block" else f"{steps}, {pricing}-wide pricing"
    if any(point.get("protect", ())):
        out += ", ends kept ({} + {} blocks)".format(*point["protect"])
    return out


def tables(results: dict) -> list[dict]:
    """The option tables' build figures, oldest first (a results file of one table keeps it
    under ``table``; MLP in quarters unless it says)."""
    found = list(results.get("tables", {}).values())
    if "table" in results and not any(t["steps"] == 4 for t in found):
        found.append(with_steps(results["table"]))
    return sorted(found, key=lambda t: (t["steps"], "probe_reused" in t))


def table_key(stats: dict) -> str:
    """A table's key in the results file: its MLP step, then ``probe reused`` where it did."""
    return f"{stats['steps']}{' probe reused' if 'probe_reused' in stats else ''}"


def with_steps(stats: dict) -> dict:
    """A table's build figures with its MLP step (quarters when it does not say)."""
    return stats | {"steps": stats.get("steps", 4)}


def summary(options: list[str]) -> str:
    """``3 × block, 2 × mlp 1/2, …`` (keep left out), most frequent first."""
    counts = Counter(o for o in options if o != "keep")
    kept = len(options) - sum(counts.values())
    return ", ".join([f"{n} × {name}" for name, n in counts.most_common()] + [f"{kept} × keep"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--budget", default="params=0.25:non_embedding")
    parser.add_argument("--k", type=int, default=1, help="candidates re-measured per round")
    parser.add_argument("--rounds", type=int, default=3, help="correction rounds at most")
    parser.add_argument("--table", help="an option table built before (skips the table phase)")
    parser.add_argument("--probe-from", help="a saved table whose probe's KLs the new one reuses")
    add_search_args(parser)
    args = parser.parse_args()
    torch.set_num_threads(2)
    budgets = Budgets.parse([args.budget])
    model, tok = ModelRef(args.model).load()
    cfg = PruneConfig(units=(AUTO,), budget=budgets.to_budget(), repair="ls")
    spec = CalibSpec().sized(model, cfg).held_back_too(True)
    fit, check = held_back(spec.data(tok))
    fields: dict = {"model": args.model, "checkpoint_bytes": checkpoint_bytes(model)}
    fields["calibration_windows"] = spec.n_samples
    name = f"joint_{args.model.split('-')[0].split('.')[0]}"
    earlier = earlier_run(name, args.model) if args.table or args.probe_from else {}
    built = {table_key(t): t for t in tables(earlier)}
    if args.table:
        path = Path(args.table)
        if stats_file(path).exists():
            stats = with_steps(json.loads(stats_file(path).read_text()))
            built[table_key(stats)] = stats
    else:
        folder = Path(os.environ.get("BENCH_TMP", "/tmp"))
        donor = OptionTable.load(args.probe_from) if args.probe_from else None
        path = folder / f"options-{args.model}{'-again' if donor else ''}.json"
        stats = table_phase(model, fit, path, donor)
        built[table_key(stats)] = stats
    table = searched(OptionTable.load(path), args)
    point = {"budget": args.budget, "k": args.k, "date": today(), "steps": mlp_steps(table)}
    point |= {"pricing": table.pricing, "protect": list(table.protect)}
    point |= point_phase(model, tok, table, budgets, fit, check, args.k, args.rounds)
    points = earlier.get("points", {}) | {point_key(point): point}
    write(name, fields | {"tables": built, "points": points})


def add_search_args(parser: argparse.ArgumentParser) -> None:
    """``--pricing`` and ``--protect``: how the search reads an option table."""
    parser.add_argument(
        "--pricing", choices=PRICINGS, default="model", help="how narrower levels are priced"
    )
    parser.add_argument(
        "--protect", default="1,1", help="FIRST,LAST: blocks at the ends that only keep"
    )


def searched(table: OptionTable, args: argparse.Namespace) -> OptionTable:
    """``table`` priced and protected as ``add_search_args``' flags say."""
    first, last = (int(n) for n in args.protect.split(","))
    return table.priced(args.pricing).protected(first, last)


def point_key(point: dict) -> str:
    """A point's key in the results file: its budget, then what differs from quarters priced
    per block (the first points' setting)."""
    key = point["budget"]
    if point["steps"] != 4:
        key += f", {STEP_NAMES[point['steps']]}"
    if point.get("pricing", "block") != "block":
        key += f", {point['pricing']}-wide pricing"
    if any(point.get("protect", ())):
        key += ", protect {}+{}".format(*point["protect"])
    return key


def earlier_run(name: str, model: str) -> dict:
    """The results of an earlier run on the same model (``--table``): a run adds its point
    beside that run's points, each point keeping its own commit and date."""
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    return old if old.get("model") == model else {}


if __name__ == "__main__":
    main()
