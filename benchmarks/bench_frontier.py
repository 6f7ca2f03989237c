"""The joint plan (``depthcut.search``) on a packaged model: how well its summed option costs
rank real plans, and what it buys at measured decode-time budgets.

Calibration: the first 12 of 16 windows of 256 tokens of the wiki calibration articles (the
same 12 × 256 as ``bench_quality.py``); the search's held-back batches: the last 4 (and, with
``--check copies``, the default, their copying probes). Evaluation: held-out perplexity and
KL(dense ‖ pruned) on 8 × 512 tokens of other articles, the same on 8 × 512 tokens of the
evaluation split's long articles only (``prose``), and decode tokens/s at batch 1 measured
interleaved with the dense model (``measure_many``).

1. The option table (one rolling walk for the quality costs + the latency table), its cost in
   forward-equivalents and seconds.
2. ``--plans N`` random mixed plans (each block keeps with a probability drawn per plan from
   0.6–0.95, else takes a random other option), each refit by ls: Spearman's rank correlation
   between the summed option costs and the measured KL on the first 4 held-out windows.
3. For each latency budget: the search (top-3, up to 3 correction rounds; ``--portfolio``:
   drawn in turn from both pricings) and, on the same calibration and held-out text, the
   single-family methods of ``bench_quality.py`` (``--single``, prefixes of its method
   names; each at the budget of its own latency table, ``--budget-mode nearest``); every
   model's decode speed measured in one interleaved run with the dense model's.

    python benchmarks/bench_frontier.py --budgets 0.1,0.2,0.3,0.4 --plans 20
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import Counter

import torch
from scipy.stats import spearmanr

import depthcut as dc
from bench_joint_large import add_search_args, searched
from bench_quality import chosen, config, held_out, non_embedding, prose_tokens, prune
from depthcut.data import evaluation_tokens
from depthcut.errors import DepthcutError
from depthcut.eval.latency import measure_many
from depthcut.importance import functional as F
from depthcut.search.budgets import Budgets
from depthcut.search.frontier import check_reachable, held_back
from depthcut.search.joint import assemble, portfolio, realise, search
from depthcut.search.library import PRICINGS, build_table
from results_file import RESULTS, write


def random_plan(table, rng: random.Random):
    keep = rng.uniform(0.6, 0.95)
    chosen = []
    for i in range(len(table.blocks)):
        options = table.options(i)  # only keep in a protected block
        changed = options[1:] and rng.random() >= keep
        chosen.append(rng.choice(options[1:]) if changed else options[0])
    return chosen


KL_WINDOWS = 4  # held-out windows of 512 tokens for the random plans' KL


@torch.no_grad()
def window_kl(model, dense, ids, bos_id) -> float:
    """Mean KL(dense ‖ model) per next token over the held-out windows in ``ids``."""
    total, count = 0.0, 0
    for w in range(len(ids) // 512):
        chunk = torch.tensor(ids[w * 512 : (w + 1) * 512]).unsqueeze(0)
        if bos_id is not None:
            chunk = torch.cat([torch.tensor([[bos_id]]), chunk], dim=1)
        ref = F.log_probs(dense(chunk).logits)
        total += float(F.token_kl(ref, model(chunk).logits).sum())
        count += chunk.shape[1]
    return total / count


def correlation(model, table, calib, ids, n: int, bos_id) -> dict:
    rng, rows = random.Random(0), []
    for _ in range(n):
        chosen = random_plan(table, rng)
        plan = assemble(table, chosen, Budgets(params=0.5))
        pruned = realise(model, plan, calib)
        ppl, kl = held_out(pruned, model, ids, bos_id)
        cost = sum(map(table.quality, chosen))
        priced = {f"cost_{p}": sum(map(table.priced(p).quality, chosen)) for p in PRICINGS}
        stream = sum(map(table.stream_error, chosen))
        changed = sum(not o.is_keep for o in chosen)
        rows.append({"cost": cost, "stream": stream, "kl": kl, "ppl": ppl, "changed": changed})
        rows[-1] |= priced
        print(
            f"plan {len(rows)}: {rows[-1]['changed']} blocks changed, cost {cost:.1f}, KL {kl:.3f}",
            flush=True,
        )
    kls = [r["kl"] for r in rows]
    ranked = {"": "cost", "_stream": "stream"} | {f"_{p}": f"cost_{p}" for p in PRICINGS}
    out = {
        f"spearman{k}": float(spearmanr([r[c] for r in rows], kls).statistic)
        for k, c in ranked.items()
    }
    return out | {"plans": rows}


SINGLE = "ShortGPT,ReplaceMe,LinearPatch,depthcut neurons (ls-aware),thesis Algorithm 8 + ls"


def scored(pruned, model, texts: dict[str, list[int]], bos_id) -> dict:
    """Held-out perplexity and KL on each text ({prefix: ids}): ``ppl``, ``kl``,
    ``prose_ppl``, …"""
    out = {}
    for prefix, ids in texts.items():
        out[f"{prefix}ppl"], out[f"{prefix}kl"] = held_out(pruned, model, ids, bos_id)
    return out


def singles(model, calib, texts, budget: float, wanted: str, bos_id) -> tuple[dict, dict]:
    """The single-family methods at a latency budget: ({name: row}, {name: pruned model});
    a method a budget or model refuses has a ``refused`` row and no model."""
    rows, models = {}, {}
    for name, (kw, repair) in chosen(wanted).items() if wanted else ():
        try:
            pruned, _, cost, seconds = prune(model, calib, config(kw, budget, repair, True))
        except DepthcutError as err:
            rows[name] = {"refused": str(err)}
            continue
        row = scored(pruned, model, texts, bos_id)
        removed = 1 - non_embedding(pruned) / non_embedding(model)
        rows[name] = row | {"removed": removed, "cost": cost, "seconds": seconds}
        models[name] = pruned
        print(f"latency {budget}, {name}: {row}", flush=True)
    return rows, models


CANDIDATE = ("pricing", "kl", "ppl", "saved", "predicted")


def candidate(round_: int, row: dict) -> dict:
    """One re-measured candidate of the search's report: its round, pricing, held-back KL and
    perplexity, measured / predicted decode time saved, and what it chose."""
    return {"round": round_} | {k: row[k] for k in CANDIDATE} | {"chose": summary(row["options"])}


def frontier(
    model, table, calib, heldback, texts, budgets, bos_id, k, single, pricings, reprice, copies
) -> dict:
    out = {}
    for budget in budgets:
        started = time.perf_counter()
        plan, rounds = search(
            model,
            table,
            Budgets(latency=budget),
            calib,
            heldback,
            k=k,
            pricings=pricings,
            reprice=reprice,
            copies=copies,
        )
        seconds = time.perf_counter() - started
        pruned = realise(model, plan, calib)
        row = scored(pruned, model, texts, bos_id)
        others, models = singles(model, calib, texts, budget, single, bos_id)
        lat = measure_many(
            {"dense": model, "joint": pruned} | models,
            lengths=(64,),
            batches=(1,),
            new_tokens=24,
            repeats=5,
        )
        dense_tps = lat["dense"].decode_tps[1]
        for name in models:
            others[name]["speed"] = lat[name].decode_tps[1] / dense_tps
            others[name]["unreliable"] = lat[name].unreliable + lat["dense"].unreliable
        speed = lat["joint"].decode_tps[1] / dense_tps
        options = plan.run["search"]["options"]
        out[str(budget)] = row | {
            "speed": speed,
            "seconds": seconds,
            "rounds": len(rounds),
            "narrowing": [r.get("narrowing", 1.0) for r in rounds],
            "options": options,
            "pricing": plan.run["search"]["pricing"],
            "measured": plan.run["search"]["measured"],
            "unreliable": lat["joint"].unreliable + lat["dense"].unreliable,
            "candidates": [candidate(r["round"], c) for r in rounds for c in r["candidates"]],
            "single": others,
        }
        print(
            f"latency {budget}: {row} speed ×{speed:.2f} "
            f"({seconds:.0f} s, {len(rounds)} rounds): {options}",
            flush=True,
        )
    return out


def summary(options: list[str]) -> str:
    """``3 × block, 2 × mlp 1/2, …``: what a plan chose, most frequent first (keep left out)."""
    counts = Counter(o for o in options if o != "keep")
    return ", ".join(f"{n} × {name}" for name, n in counts.most_common())


PRICED = {"block": "per block", "model": "model-wide"}


def correlation_text(corr: dict) -> str:
    """``; Spearman ρ … 0.860 (per block 0.860, model-wide 0.870; stream errors alone …)``."""
    if not corr:
        return ""
    found = [p for p in PRICINGS if f"spearman_{p}" in corr]
    others = [f"{PRICED[p]} {corr[f'spearman_{p}']:.3f}" for p in found]
    if "spearman_stream" in corr:
        others.append(f"stream errors alone: {corr['spearman_stream']:.3f}")
    text = f"; Spearman ρ (summed option cost vs KL, {len(corr['plans'])} random plans) "
    text += f"{corr['spearman']:.3f}" + (f" ({'; '.join(others)})" if others else "")
    if "from" in corr:
        text += f", from the run of commit {corr['from']['commit']} (`{corr['from']['command']}`)"
    return text


def own_single(results: dict) -> dict | None:
    """The single-family rows measured in the results file's own run (``--single``), in the
    layout of ``results/latency.json``; None for a file made without them."""
    rows = {b: r["single"] for b, r in results["frontier"].items() if r.get("single")}
    return {"budgets": rows} if rows else None


SINGLE_NOTE = {
    True: "\nSingle-family rows: the same run, the same calibration and held-out text, each at "
    "the budget of its own latency table (`--budget-mode nearest`); every decode speed-up is "
    "measured interleaved with the dense model's and the joint plan's; ⚠: the timing flagged "
    "itself.",
    False: "\nSingle-family rows: `results/latency.json` (`python benchmarks/bench_quality.py "
    "--latency`, an earlier run on this machine, commit cd76321), at the same budgets of their "
    "own latency tables; ⚠: the timing flagged itself.",
}


def doc_table(results: dict, single: dict | None = None) -> str:
    """The documentation's table: the joint plan per latency budget, then the single-family
    methods: those of the file's own run where it has them, else ``single``
    (``results/latency.json``, their own run) at the same budgets."""
    corr, own = results.get("correlation", {}), own_single(results)
    single, prose = own or single, "prose_ppl" in results["dense"]
    extra = " prose perplexity |" if prose else ""
    lines = [
        f"`{results['command']}` — {results['date']}, {results['hardware']['cores']} cores "
        f"({results['hardware']['cpu']}), commit {results['commit']}; dense perplexity "
        f"{results['dense']['ppl']:.2f}; option table {results['table']['seconds']:.0f} s, "
        f"{results['table']['forward_equivalents']:.2f} forward-equivalents of the "
        f"calibration set; narrower levels priced {PRICED[results.get('pricing', 'block')]}"
        + correlation_text(corr)
        + CHECKS.get(results.get("check", ""), ""),
        "",
        "| latency budget | method | decode time saved (search's check) | decode speed-up | "
        f"perplexity | KL |{extra} rounds | chosen |",
        "|---:|---|---:|---:|---:|---:|" + "---:|" * prose + "---:|---|",
    ]
    refused = {}
    for budget, row in results["frontier"].items():
        warn = " ⚠" if row["unreliable"] else ""
        chose = summary(row["options"])
        if "pricing" in row:
            chose += f" (ranked {PRICED[row['pricing']]})"
        cell = f" {row['prose_ppl']:.2f} |" if prose else ""
        lines.append(
            f"| {float(budget):.0%} | joint | {row['measured']['saved']:.1%} | "
            f"{row['speed']:.2f}×{warn} | {row['ppl']:.2f} | {row['kl']:.3f} |{cell} "
            f"{row['rounds']} | {chose} |"
        )
        for name, other in (single or {}).get("budgets", {}).get(budget, {}).items():
            if "refused" in other:
                refused.setdefault(name, other["refused"])
                continue
            warn = " ⚠" if other.get("unreliable") or other.get("speed_unreliable") else ""
            cell = f" {other['prose_ppl']:.2f} |" if prose else ""
            lines.append(
                f"| {float(budget):.0%} | {name} | | {other['speed']:.2f}×{warn} | "
                f"{other['ppl']:.2f} | {other['kl']:.3f} |{cell} | |"
            )
    lines += [f"\n{name}: refused ({why})." for name, why in refused.items()]
    if single:
        lines.append(SINGLE_NOTE[own is not None])
        lines += speed_table(results, single)
        if prose:
            lines += ["", "On the prose held-out text:"] + speed_table(results, single, "prose_")
    return "\n".join(lines)


CHECKS = {
    "copies": "; the search's check: the held-back windows and their copying probes alike",
    "text": "; the search's check: the held-back windows only",
}


SPEEDS = (1.15, 1.3, 1.5)  # the comparison points


def at_speed(curve: list[tuple[float, float]], speed: float) -> float | None:
    """Perplexity at a measured decode speed-up, interpolated in log-perplexity between the
    two points of ``curve`` ((speed-up, perplexity), the dense model's (1, ppl) among them)
    around it; None beyond the curve's fastest point (never extrapolated)."""
    points = sorted(curve)
    for (s0, p0), (s1, p1) in zip(points, points[1:]):
        if s0 <= speed <= s1:
            w = (speed - s0) / (s1 - s0) if s1 > s0 else 0.0
            return math.exp((1 - w) * math.log(p0) + w * math.log(p1))
    return None


def curves(
    results: dict, single: dict | None, text: str = ""
) -> dict[str, list[tuple[float, float]]]:
    """{method: [(speed-up, perplexity on ``text``), …]} over the budgets, each from the
    dense point (``text``: the prefix of the held-out text's keys, ``""`` or ``"prose_"``)."""
    key = f"{text}ppl"
    dense = [(1.0, results["dense"][key])]
    found = {"joint": dense + [(r["speed"], r[key]) for r in results["frontier"].values()]}
    for rows in (single or {}).get("budgets", {}).values():
        for name, row in rows.items():
            if "refused" in row:
                continue
            found.setdefault(name, list(dense)).append((row["speed"], row[key]))
    return found


def speed_table(results: dict, single: dict | None, text: str = "") -> list[str]:
    """Perplexity of every method at the same measured speed-ups (``at_speed``), the lowest
    in bold, and the joint plan's log-perplexity gap to dense over the best other method's."""
    found, dense = curves(results, single, text), math.log(results["dense"][f"{text}ppl"])
    lines = ["", "| method | " + " | ".join(f"at {s:.2f}×" for s in SPEEDS) + " |"]
    lines.append("|---|" + "---:|" * len(SPEEDS))
    at = {name: [at_speed(c, s) for s in SPEEDS] for name, c in found.items()}
    best = [min((v[i] for v in at.values() if v[i]), default=None) for i in range(len(SPEEDS))]
    for name, values in at.items():
        cells = [
            "—" if v is None else (f"**{v:.2f}**" if v == b else f"{v:.2f}")
            for v, b in zip(values, best)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    gaps = []
    for i, s in enumerate(SPEEDS):
        others = [v[i] for n, v in at.items() if n != "joint" and v[i]]
        if at["joint"][i] and others:
            ratio = (math.log(at["joint"][i]) - dense) / (math.log(min(others)) - dense)
            gaps.append(f"{ratio:.2f} at {s:.2f}×")
    lines.append(
        "\nPerplexity interpolated in log along each method's measured (speed-up, perplexity) "
        "points, from the dense model's (1×); — : the method's curve ends before that speed-up. "
        "The joint plan's log-perplexity gap to dense ÷ the best other method's: "
        + (", ".join(gaps) or "no common speed-up")
        + "."
    )
    return lines


def earlier_correlation(name: str, fields: dict) -> dict:
    """``--plans 0``: the correlation of the results file's earlier run, with that run's
    commit and command, where it scored the same model, option levels and pricing (the random
    plans and their costs do not depend on the search)."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    same = all(old.get(k) == fields[k] for k in ("model", "pricing", "protect"))
    if not same or "correlation" not in old:
        return {}
    made = old["correlation"].get("from", {"commit": old["commit"], "command": old["command"]})
    return {"correlation": old["correlation"] | {"from": made}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budgets", default="0.1,0.2,0.3,0.4")
    parser.add_argument("--plans", type=int, default=20)
    parser.add_argument("--k", type=int, default=3, help="candidates re-measured per round")
    parser.add_argument("--table", action="store_true", help="print the results file's table")
    parser.add_argument(
        "--portfolio", action="store_true", help="candidates from both pricings in turn"
    )
    parser.add_argument("--name", default=None, help="results file name (default frontier_MODEL)")
    parser.add_argument(
        "--single", default=SINGLE, help="single-family methods (bench_quality name prefixes)"
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="longest run of removed blocks priced as one option"
    )
    parser.add_argument(
        "--reprice", action="store_true", help="narrower levels repriced after the first round"
    )
    parser.add_argument(
        "--check",
        choices=("copies", "text"),
        default="copies",
        help="the search's check: held-back windows and their copying probes, or windows only",
    )
    add_search_args(parser)
    args = parser.parse_args()
    name = args.name or f"frontier_{args.model.split('-')[0]}"
    if args.table:
        single = json.loads((RESULTS / "latency.json").read_text())
        print(doc_table(json.loads((RESULTS / f"{name}.json").read_text()), single))
        return
    torch.set_num_threads(2)
    model, tok = dc.load_model(args.model)
    bos = args.model.startswith("gemma")
    bos_id = tok.bos_token_id if bos else None
    calib, heldback = held_back(dc.calibration(tok, "wiki", n_samples=16, seq_len=256, bos=bos))
    ids = evaluation_tokens(tok, "wiki", 512 * 8)
    texts = {"": ids, "prose_": prose_tokens(tok, 512 * 8)}
    started = time.perf_counter()
    table = build_table(model, calib, progress=False, longest_run=args.runs)
    options = searched(table, args)
    built = time.perf_counter() - started
    budgets = [float(b) for b in args.budgets.split(",") if b]
    check_reachable(options, [Budgets(latency=b) for b in budgets])  # before hours of work
    print(
        f"option table: {built:.0f} s, "
        f"{options.cost['forward_equivalents']:.2f} forward-equivalents",
        flush=True,
    )
    fields = {
        "model": args.model,
        "dense": scored(model, model, texts, bos_id),
        "check": args.check,
        "table": {"seconds": built} | options.cost,
        "pricing": options.pricing,
        "protect": list(options.protect),
    }
    fields["table"]["ratios"] = options.latency["ratios"]
    if not args.plans:
        fields |= earlier_correlation(name, fields)
    else:
        fields["correlation"] = correlation(model, options, calib, ids, args.plans, bos_id)
        print(
            f"Spearman rho (summed cost vs KL): {fields['correlation']['spearman']:.3f}", flush=True
        )
    pricings = portfolio(options) if args.portfolio else None
    fields["frontier"] = frontier(
        model,
        options,
        calib,
        heldback,
        texts,
        budgets,
        bos_id,
        args.k,
        args.single,
        pricings,
        args.reprice,
        args.check == "copies",
    )
    write(name, fields)


if __name__ == "__main__":
    main()
