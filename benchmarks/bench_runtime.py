"""The joint search timed in PyTorch or in llama.cpp (``--runtime llamacpp``), every plan then
deployed to llama.cpp: which timing lands a latency budget where the model runs, and at what
quality.

SmolLM2-135M. Calibration: the first 12 of 16 windows of 256 wiki tokens; the search's
held-back batches: the last 4 (as ``bench_frontier.py``). One option table's quality costs
(one rolling walk), timed twice: by PyTorch's decode hooks and sliced copies, and by llama.cpp
(``LlamaCpp``: whole-model f16 variants, 2 threads). For each latency budget the search runs
under each timing (top-3, up to 3 correction rounds, each correcting against its own runtime's
measurements). Every chosen plan is exported to an f16 GGUF and measured in llama.cpp in one
interleaved run with the dense export (decode seconds per token after a 64-token prompt,
prefill of 512 tokens, medians of 5 rounds); beside it its PyTorch decode speed-up (batch 1,
interleaved with dense) and held-out perplexity and KL on 8 × 512 tokens of other articles.

    python benchmarks/bench_runtime.py --budgets 0.15,0.25,0.35
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import depthcut as dc
from bench_frontier import summary
from bench_quality import held_out
from depthcut.data import evaluation_tokens
from depthcut.eval.latency import measure_many
from depthcut.graph.structure import discover_structure
from depthcut.search.budgets import Budgets
from depthcut.search.frontier import held_back
from depthcut.search.joint import realise, search
from depthcut.search.library import OptionTable, build_table, measured_latency
from results_file import flag, provenance, show

THREADS, ROUNDS = 2, 5
BUDGETS = (0.15, 0.25, 0.35)


def tables(model, calib, timer) -> tuple[dict, dict]:
    """({runtime: option table}, {runtime: seconds its timings took}): one walk's quality
    costs with PyTorch's and llama.cpp's timings."""
    started = time.perf_counter()
    torch_table = build_table(model, calib, progress=False)
    built = time.perf_counter() - started
    started = time.perf_counter()
    latency = measured_latency(model, discover_structure(model), runtime=timer)
    timed = time.perf_counter() - started
    llama_table = OptionTable(torch_table.model, torch_table.blocks, latency, torch_table.cost)
    return {"torch": torch_table, "llamacpp": llama_table}, {"torch": built, "llamacpp": timed}


def costs(table: OptionTable) -> dict:
    """Block 0's decode costs as shares of the dense per-token time, and the MLP / KV ratios."""
    lat = table.latency
    units, total = lat["units"], lat["total"]
    shares = {k: units[f"{k}:0"] * len(table.blocks) / total for k in ("block", "attention", "mlp")}
    return {"shares": shares, "ratios": lat["ratios"], "unreliable": lat.get("unreliable", [])}


def deployed(model, pruned: dict, timer) -> dict:
    """Every pruned model and the dense one in llama.cpp, one interleaved run: decode and
    prefill speed-ups over dense (medians), and whether the dense timing flagged itself."""
    files = {name: timer.write(m, name) for name, m in {"dense": model, **pruned}.items()}
    times = timer.time_files(files, ROUNDS, model)
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    out = {}
    for name in pruned:
        out[name] = {k: med["dense"][k] / med[name][k] for k in ("decode", "prefill")}
    spread = max((max(v) - min(v)) / statistics.median(v) for v in times["dense"].values())
    return {"speedups": out, "dense_spread": spread}


def measure() -> dict:
    args = parse()
    torch.set_num_threads(THREADS)
    model, tok = dc.load_model("smollm2-135m")
    calib, heldback = held_back(dc.calibration(tok, "wiki", n_samples=16, seq_len=256))
    ids = evaluation_tokens(tok, "wiki", 512 * 8)
    timer = dc.LlamaCpp(tok, "f16", threads=THREADS)
    found, seconds = tables(model, calib, timer)
    rows, pruned = [], {}
    for budget in args.budgets:
        for runtime, table in found.items():
            started = time.perf_counter()
            run_on = timer if runtime == "llamacpp" else None
            kw = {"runtime": run_on} if run_on else {}
            plan, rounds = search(model, table, Budgets(latency=budget), calib, heldback, **kw)
            took = time.perf_counter() - started
            name = f"{runtime} {budget}"
            pruned[name] = realise(model, plan, calib)
            ppl, kl = held_out(pruned[name], model, ids, None)
            search_info = plan.run["search"]
            rows.append(
                {"budget": budget, "runtime": runtime, "name": name, "ppl": ppl, "kl": kl}
                | {"rounds": len(rounds), "seconds": took, "options": search_info["options"]}
                | {"measured": search_info["measured"]}
            )
            print(f"{name}: ppl {ppl:.2f}, {summary(search_info['options'])}", flush=True)
    lat = measure_many({"dense": model, **pruned}, lengths=(64,), batches=(1,), new_tokens=24)
    llama = deployed(model, pruned, timer)
    for row in rows:
        row["torch_speedup"] = lat[row["name"]].decode_tps[1] / lat["dense"].decode_tps[1]
        row["torch_unreliable"] = lat[row["name"]].unreliable + lat["dense"].unreliable
        row["llamacpp"] = llama["speedups"][row["name"]]
    dense_ppl, _ = held_out(model, model, ids, None)
    return {
        "model": "smollm2-135m",
        "threads": THREADS,
        "dense": {"ppl": dense_ppl, "llamacpp_spread": llama["dense_spread"]},
        "tables": {k: costs(t) | {"seconds": seconds[k]} for k, t in found.items()},
        "rows": rows,
    }


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--table", action="store_true", help="print the results file's table")
    args = parser.parse_args()
    args.budgets = [float(b) for b in args.budgets.split(",") if b]
    return args


def table(data: dict) -> str:
    """Per budget and timing runtime: the search's own check, llama.cpp's and PyTorch's
    measured speed-ups of the deployed plan, its quality and what it chose; then the two
    runtimes' option costs."""
    lines = [
        f"{provenance(data)}; SmolLM2-135M, {data['threads']} threads; dense perplexity "
        f"{data['dense']['ppl']:.2f}; llama.cpp f16, medians of {ROUNDS} interleaved rounds "
        f"(dense spread {data['dense']['llamacpp_spread']:.0%})",
        "",
        "| decode budget | timed in | saving (search's check) | llama.cpp decode | llama.cpp "
        "prefill | PyTorch decode | perplexity | KL | rounds | chosen |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["rows"]:
        m, ll = r["measured"], r["llamacpp"]
        torch_flag = flag({"unreliable": r["torch_unreliable"]})
        lines.append(
            f"| {r['budget']:.0%} | {r['runtime']} | {m['saved']:.1%} | {ll['decode']:.2f}× | "
            f"{ll['prefill']:.2f}× | {r['torch_speedup']:.2f}×{torch_flag} | {r['ppl']:.2f} | "
            f"{r['kl']:.3f} | {r['rounds']} | {summary(r['options'])} |"
        )
    lines += ["", "| option costs timed in | blocks | attentions | MLPs | MLP 3/4, 1/2, 1/4 |"]
    lines[-1] += " KV 2/3, 1/3 |"
    lines.append("|---|---:|---:|---:|---|---|")
    for name, t in data["tables"].items():
        s = t["shares"]
        mlp, kv = _levels(t["ratios"]["mlp"]), _levels(t["ratios"]["attention"])
        lines.append(
            f"| {name}{flag(t)} ({t['seconds']:.0f} s) | {s['block']:.1%} | {s['attention']:.1%} "
            f"| {s['mlp']:.1%} | {mlp} | {kv} |"
        )
    lines.append(
        "\nShares: all blocks' cost of each kind over the dense model's time per token; ratios: "
        "a narrowed sublayer's time over its full time. ⚠: the timing flagged itself."
    )
    return "\n".join(lines)


def _levels(ratios: dict) -> str:
    """The narrowed levels' time ratios, widest first (full width and removal left out)."""
    ordered = sorted(ratios.items(), key=lambda kv: -int(kv[0]))[1:-1]
    return ", ".join(f"{v:.2f}" for _, v in ordered)


if __name__ == "__main__":
    show("runtime", table, measure)
