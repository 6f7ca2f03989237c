"""Side by side against the published training-free methods, on the packaged SmolLM2-135M, in one
run: the same calibration text (12 × 256 tokens of the wiki calibration articles) for every
method and every repair, the same held-out text (8 × 512 tokens of other articles) for every
score. Budgets are fractions of the non-embedding parameters, ``--budget-mode nearest``.

Columns: non-embedding parameters actually removed (counted on the pruned model, so a
LinearPatch's d × d modules count against it); held-out perplexity; gap = log ppl − log
ppl(dense) as a multiple of ShortGPT's gap at the same budget (``--latency``: budgets are
fractions of the decode time in each method's measured per-unit latency table, ``--budget
latency=F``, so methods are compared at equal planned speed-up; methods whose units a latency
budget does not cover are reported as refused); KL(dense ‖ pruned) of the next-
token distribution on the held-out text; PIQA, ARC-easy, HellaSwag, WinoGrande (partial scoring)
and LAMBADA (last word is the greedy continuation) accuracy (first ``--limit`` items of each);
the share of greedy generations that loop; the selection's cost in forward-equivalents of the
calibration set (and the wall time of score + plan + repair; methods that score the same way
share one scoring, whose time only the first of them shows); then decode tokens/s ÷ dense
(batch 1, all models measured interleaved). ``--limit 0`` skips the tasks (perplexity and KL
only, for sweeps across budgets).

    python benchmarks/bench_quality.py --budgets 0.25 --limit 50
    python benchmarks/bench_quality.py --model gemma3-270m --budgets 0.25 --limit 50
    python benchmarks/bench_quality.py --budgets 0.1,0.25,0.4 --limit 50 \
        --methods ShortGPT,"depthcut neurons (ls" --plot benchmarks/results/quality

Gemma3-270M is given a BOS token at the start of every calibration and evaluation window (its
perplexity is 17.25 with it, 38.7 without). A method whose repair a model refuses (the depth
fold cannot pass Gemma3's post-norms) is reported as refused, with the reason.

The greedy sublayer methods (BlockPruner; depthcut's greedy ls-aware sublayers) re-score ≈ 50
candidates for ≈ 25 steps: several CPU-hours on this 2-core machine, so they run only when named
(``--methods BlockPruner``)."""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

import depthcut as dc
import results_file
from depthcut.data import evaluation_tokens, split_source, tokenize_until
from depthcut.errors import DepthcutError
from depthcut.eval.generation import generate_samples
from depthcut.eval.latency import measure_many
from depthcut.eval.perplexity import perplexity
from depthcut.eval.run import param_counts
from depthcut.eval.zeroshot import zeroshot
from depthcut.importance import functional as F
from results_file import FLAG_NOTE, provenance

WINDOW, WINDOWS = 512, 8
TASKS = ["piqa", "arc_easy", "hellaswag", "winogrande", "lambada"]
# name: (PruneConfig keywords, repair); a neuron plan's fraction follows the budget
METHODS = {
    "ShortGPT (BI blocks)": (dict(units=("block",), importance="bi"), "none"),
    "Gromov / UIDL (angular span)": (
        dict(units=("block",), importance="gromov", strategy="contiguous"),
        "none",
    ),
    "SLEB (greedy blocks, ppl)": (
        dict(units=("block",), importance="ppl", strategy="iterative"),
        "none",
    ),
    "BlockPruner (greedy sublayers, ppl)": (
        dict(units=("attention", "mlp"), importance="ppl", strategy="iterative"),
        "none",
    ),
    "ReplaceMe-LS (span + fold)": (
        dict(units=("block",), importance="gromov", strategy="contiguous"),
        "ls",
    ),
    "LinearPatch (span + patch)": (
        dict(units=("block",), importance="gromov", strategy="contiguous"),
        "patch",
    ),
    "ShortGPT + ls": (dict(units=("block",), importance="bi"), "ls"),
    "depthcut ls-aware blocks + ls": (dict(units=("block",), importance="ls"), "ls"),
    "depthcut ls-aware sublayers + ls": (
        dict(units=("block", "attention", "mlp"), importance="ls"),
        "ls",
    ),
    "depthcut ls-aware greedy sublayers + ls": (
        dict(units=("block", "attention", "mlp"), importance="ls", strategy="iterative"),
        "ls",
    ),
    "depthcut neurons (act. freq.) + ls": (
        dict(units=("neuron",), width_importance="activation_frequency"),
        "ls",
    ),
    "depthcut neurons (ls-aware) + ls": (
        dict(units=("neuron",), width_importance="ls"),
        "ls",
    ),
    "depthcut fine (ls-aware, unified) + ls": (
        dict(units=("fine",), importance="ls", strategy="unified"),
        "ls",
    ),
    "thesis Algorithm 8 (fine, interleave)": (
        dict(units=("fine",), importance="angular", strategy="interleave"),
        "none",
    ),
    "thesis Algorithm 8 + ls": (
        dict(units=("fine",), importance="angular", strategy="interleave"),
        "ls",
    ),
}


def config(kw: dict, budget: float, repair: str, latency: bool = False) -> dc.PruneConfig:
    if latency:
        target = dc.Budget(latency=budget, mode="nearest")
    else:
        target = dc.Budget(params=budget, count="non_embedding", mode="nearest")
    return dc.PruneConfig(**kw, budget=target, repair=repair)


def _windows(ids, bos_id: int | None) -> list[torch.Tensor]:
    """The held-out windows as batches of one, each led by ``bos_id`` where given."""
    chunks = []
    for w in range(WINDOWS):
        chunk = torch.tensor(ids[w * WINDOW : (w + 1) * WINDOW]).unsqueeze(0)
        if bos_id is not None:
            chunk = torch.cat([torch.tensor([[bos_id]]), chunk], dim=1)
        chunks.append(chunk)
    return chunks


@torch.no_grad()
def reference(dense, ids, bos_id: int | None) -> list[torch.Tensor]:
    """The dense model's next-token log-probabilities on each held-out window: what
    ``held_out`` compares with, kept instead of the dense model where memory is short."""
    return [F.log_probs(dense(chunk).logits) for chunk in _windows(ids, bos_id)]


@torch.no_grad()
def held_out(model, dense, ids, bos_id: int | None) -> tuple[float, float]:
    """(perplexity, mean KL(dense ‖ model) per next token) on the held-out windows;
    ``dense``: the dense model, or its ``reference`` log-probabilities."""
    ppl = perplexity(
        model, ids, window=WINDOW, bos_id=bos_id, max_windows=WINDOWS, progress=False
    ).perplexity
    kl, count = 0.0, 0
    for w, chunk in enumerate(_windows(ids, bos_id)):
        ref = dense[w] if isinstance(dense, list) else F.log_probs(dense(chunk).logits)
        kl += float(F.token_kl(ref, model(chunk).logits).sum())
        count += chunk.shape[1]
    return ppl, kl / count


PROSE_CHARS = 2000


def prose_tokens(tok, n_tokens: int) -> list[int]:
    """The first ``n_tokens`` tokens of the evaluation split's articles of at least
    ``PROSE_CHARS`` characters: a second held-out text, long prose only (the usual one opens
    with short templated articles that reward in-context copying)."""
    long = [a for a in split_source("wiki", "evaluation") if len(a) >= PROSE_CHARS]
    return tokenize_until(tok, "\n\n".join(long), n_tokens)


def quality(model, dense, tok, ids, limit: int, bos_id: int | None) -> dict:
    """Held-out perplexity and KL; with ``limit`` > 0 also the tasks and the looping share."""
    ppl, kl = held_out(model, dense, ids, bos_id)
    if limit <= 0:
        return {"ppl": ppl, "kl": kl}
    acc = zeroshot(model, tok, TASKS, limit=limit)
    loops = [s.looping for s in generate_samples(model, tok)]
    return {
        "ppl": ppl,
        "kl": kl,
        **{t: acc[t]["acc"] for t in TASKS},
        "accuracy": sum(acc[t]["acc"] for t in TASKS) / len(TASKS),
        "loops": sum(loops) / len(loops),
    }


SCORES: dict = {}  # scores shared by methods (and budgets) that score the same way


def scored(model, calib, cfg: dc.PruneConfig):
    """``dc.score`` once per way of scoring: the budget enters only greedy and width scoring."""
    by_budget = cfg.strategy == "iterative" or bool(cfg.width_units)
    key = (cfg.units, cfg.importance, cfg.strategy, cfg.width_importance)
    key += (cfg.budget,) if by_budget else ()
    if key not in SCORES:
        SCORES[key] = dc.score(model, cfg, calib, progress=False)
    return SCORES[key]


def prune(model, calib, cfg: dc.PruneConfig) -> tuple:
    started = time.perf_counter()
    scores = scored(model, calib, cfg)
    plan = dc.plan(scores, cfg, model)
    work = model
    if cfg.repair != "none":
        work = copy.deepcopy(model)
        dc.repair(work, plan, calib, cfg.repair, progress=False)
    pruned = dc.apply(work, plan, inplace=work is not model)
    cost = scores.cost.get("forward_equivalents", float("nan"))
    return pruned, plan, cost, time.perf_counter() - started


def row(name, removed, q, gap_ratio, cost, seconds) -> str:
    tasks = " | ".join(f"{q[t]:.3f}" for t in TASKS if t in q)
    tasks += f" | {q['accuracy']:.3f} | {q['loops']:.0%} |" if "loops" in q else ""
    spent = "—" if math.isnan(cost) else f"{cost:.1f}"
    return (
        f"| {name} | {removed:.1%} | {q['ppl']:.2f} | "
        f"{gap_ratio:.2f} | {q['kl']:.3f} | {tasks} {spent} ({seconds:.0f} s) |"
    )


def non_embedding(model) -> int:
    return param_counts(model)["params_non_embedding"]


SLOW = (
    "BlockPruner (greedy sublayers, ppl)",
    "depthcut ls-aware greedy sublayers + ls",
    "depthcut fine (ls-aware, unified) + ls",  # ≈ 30 forward-equivalents, 10 min here
)


def chosen(wanted: str) -> dict:
    prefixes = tuple(p.strip() for p in wanted.split(",") if p.strip())
    if prefixes:
        return {k: v for k, v in METHODS.items() if k.startswith(prefixes)}
    return {k: v for k, v in METHODS.items() if k not in SLOW}


def run_budget(model, tok, calib, ids, dense_q, budget, methods, args, bos_id) -> dict:
    """One budget's table (printed as it goes) and the decode speeds; returns the rows."""
    of = "of the measured decode time" if args.latency else "of non-embedding parameters"
    print(f"### {budget:.0%} {of}\n")
    tasks = [*TASKS, "mean", "loops"] if args.limit > 0 else []
    print("| method | removed | ppl | gap ÷ ShortGPT's | KL | " + " | ".join([*tasks, ""]), end="")
    print("selection cost (fwd-eq.) |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(tasks) + "---:|")
    pruned, short_gap, rows = {"dense": model}, None, {}
    for name, (kw, repair) in methods.items():
        try:
            cfg = config(kw, budget, repair, args.latency)
            pruned[name], plan, cost, seconds = prune(model, calib, cfg)
        except DepthcutError as err:
            print(f"| {name} | refused: {err} |", flush=True)
            rows[name] = {"refused": str(err)}
            continue
        q = quality(pruned[name], model, tok, ids, args.limit, bos_id)
        gap = math.log(q["ppl"] / dense_q["ppl"])
        short_gap = short_gap or gap
        removed = 1 - non_embedding(pruned[name]) / non_embedding(model)  # patches count
        print(row(name, removed, q, gap / short_gap, cost, seconds), flush=True)
        rows[name] = q | {"removed": removed, "gap": gap, "cost": cost, "seconds": seconds}
    lat = measure_many(pruned, lengths=(64,), batches=(1,), new_tokens=24, repeats=3)
    dense_tps = lat["dense"].decode_tps[1]
    print("\n| method | decode tokens/s, batch 1 | ×dense |\n|---|---:|---:|")
    for name, result in lat.items():
        tps = result.decode_tps[1]
        print(f"| {name} | {tps:.1f} | {tps / dense_tps:.2f} |")
        if name in rows:
            rows[name]["speed"] = tps / dense_tps
            rows[name]["speed_unreliable"] = result.unreliable + lat["dense"].unreliable
        else:
            dense_q["tps"] = tps
    print(flush=True)
    return rows


def plot(results: dict, dense: dict, prefix: Path, title: str, speed: bool = False) -> None:
    """Perplexity and mean accuracy against non-embedding parameters removed (``speed``: the
    measured decode speed-up), one curve per method: ``<prefix>_ppl.png``, ``<prefix>_acc.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({m for rows in results.values() for m in rows if "refused" not in rows[m]})
    x = "speed" if speed else "removed"
    for key, label, log in (("ppl", "held-out perplexity", True), ("accuracy", "mean acc.", False)):
        if key not in dense:  # --limit 0: no tasks
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for m in methods:
            points = sorted((r[m][x], r[m][key]) for r in results.values() if "ppl" in r.get(m, {}))
            ax.plot(*zip(*points), marker="o", label=m)
        ax.axhline(dense[key], color="k", linestyle=":", label="dense")
        xlabel = "decode tokens/s ÷ dense (batch 1)" if speed else "non-embedding params removed"
        ax.set(xlabel=xlabel, ylabel=label, title=title)
        if log:
            ax.set_yscale("log")
        if not speed:
            ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(f"{prefix}_{key if key == 'ppl' else 'acc'}.png", dpi=110)
        plt.close(fig)


def doc_table(data: dict, budget: str | None = None) -> str:
    """One budget's comparison table from a ``--name`` results file: the lowest perplexity,
    gap, KL and the best task mean in bold; refused methods with the reason."""
    budget = budget or next(iter(data["budgets"]))
    rows, dense = data["budgets"][budget], data["dense"]
    tasks = [t for t in TASKS if t in dense]
    done = {m: r for m, r in rows.items() if "refused" not in r}
    short = next(r["gap"] for m, r in done.items() if m.startswith("ShortGPT"))
    best = {k: min(r[k] for r in done.values()) for k in ("ppl", "kl")}
    best["accuracy"] = max((r["accuracy"] for r in done.values()), default=None)
    extra = [*tasks, "mean", "loops"] if tasks else []

    def cell(r: dict, key: str, text: str) -> str:
        return f"**{text}**" if r[key] == best.get(key) else text

    dense_line = f"dense: perplexity {dense['ppl']:.2f}"
    if tasks:
        scores = ", ".join(f"{t} {dense[t]:.3f}" for t in tasks)
        dense_line += f", {scores} (mean {dense['accuracy']:.3f}; first {data['limit']} items)"
        dense_line += f", {dense['loops']:.0%} of greedy generations loop"
    if "tps" in dense:
        dense_line += f"; decode {dense['tps']:.1f} tokens/s at batch 1"
    lines = [
        f"{provenance(data)}: {data['model']}, {float(budget):.0%} of the non-embedding "
        f"parameters; {dense_line}",
        "",
        "| method | removed | ppl | gap ÷ ShortGPT's | KL | "
        + "".join(f"{t} | " for t in extra)
        + "selection cost (fwd-eq.) | decode ×dense |",
        "|---|---:|---:|---:|---:|" + "---:|" * (len(extra) + 2),
    ]
    for m, r in rows.items():
        if "refused" in r:
            lines.append(f"| {m} | refused: {r['refused']} |" + " |" * (len(extra) + 5))
            continue
        cost = "—" if math.isnan(r["cost"]) else f"{r['cost']:.1f}"
        cells = [
            f"{r['removed']:.1%}",
            cell(r, "ppl", f"{r['ppl']:.2f}"),
            cell(r, "ppl", f"{r['gap'] / short:.2f}"),
            cell(r, "kl", f"{r['kl']:.3f}"),
            *(f"{r[t]:.3f}" for t in tasks),
            *([cell(r, "accuracy", f"{r['accuracy']:.3f}"), f"{r['loops']:.0%}"] if tasks else []),
            f"{cost} ({r['seconds']:.0f} s)",
            f"{r['speed']:.2f}×" + (" ⚠" if r.get("speed_unreliable") else ""),
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if any(r.get("speed_unreliable") for r in done.values()):
        lines.append(f"\n{FLAG_NOTE}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m or gemma3-270m")
    parser.add_argument("--budgets", default="0.25")
    parser.add_argument("--limit", type=int, default=200, help="items per task; 0: no tasks")
    parser.add_argument("--methods", default="", help="comma-separated prefixes (default all)")
    parser.add_argument("--plot", default=None, help="path prefix of the curves (+ .json)")
    parser.add_argument(
        "--latency", action="store_true", help="budgets are fractions of decode time"
    )
    parser.add_argument("--name", default=None, help="write benchmarks/results/NAME.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tok = dc.load_model(args.model)
    model.eval()
    bos = args.model.startswith("gemma")
    bos_id = tok.bos_token_id if bos else None
    calib = dc.calibration(tok, "wiki", n_samples=12, seq_len=256, bos=bos)
    ids = evaluation_tokens(tok, "wiki", WINDOW * WINDOWS)
    dense_q = quality(model, model, tok, ids, args.limit, bos_id)
    tasks = ", ".join(f"{t} {dense_q[t]:.3f}" for t in TASKS if t in dense_q)
    if tasks:
        tasks = f", {tasks}, loops {dense_q['loops']:.0%} (first {args.limit} items per task)"
    print(f"{args.model} dense: perplexity {dense_q['ppl']:.2f}{tasks}\n", flush=True)
    methods, results = chosen(args.methods), {}
    for budget in [float(b) for b in args.budgets.split(",")]:
        results[budget] = run_budget(model, tok, calib, ids, dense_q, budget, methods, args, bos_id)
    fields = {"model": args.model, "limit": args.limit, "dense": dense_q, "budgets": results}
    if args.name:
        results_file.write(args.name, fields)
    if args.plot:
        prefix = Path(args.plot)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        if prefix.resolve().parent == results_file.RESULTS:  # with the command, commit, date
            results_file.write(prefix.name, fields)
        else:
            prefix.with_suffix(".json").write_text(json.dumps(fields, indent=1))
        plot(results, dense_q, prefix, args.model, speed=args.latency)


if __name__ == "__main__":
    main()
