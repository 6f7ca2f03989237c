"""The documentation's benchmark tables, generated from ``benchmarks/results/*.json``.

A table in a page sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``;
``python benchmarks/tables.py NAME`` prints it, ``python benchmarks/tables.py --write`` rewrites
every generated block of ``docs/`` from the results files, and ``tests/test_doc_tables.py``
fails when a block differs from what its results file gives. Each table opens with the command,
date, commit and hardware its results file records (where the file records them)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from results_file import provenance

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOCS = HERE.parent / "docs"
BLOCK = re.compile(r"(<!-- generated: (\S+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _bold_best(cells: list[tuple[float, str]], low: bool = True) -> list[str]:
    best = (min if low else max)(v for v, _ in cells)
    return [f"**{text}**" if v == best else text for v, text in cells]


def budget_grid(name: str, third: str) -> str:
    """A method × budget grid: removed / perplexity / ``third`` (``kl``, ``speed`` or
    ``accuracy``) per cell;
    the best perplexity of each column in bold."""
    data = _load(name)
    budgets = list(data["budgets"])
    methods = list(data["budgets"][budgets[0]])
    fmt = {
        "kl": lambda r: f"{r['kl']:.2f}",
        "speed": lambda r: f"{r['speed']:.2f}×",
        "accuracy": lambda r: f"{r['accuracy']:.3f}",
    }[third]
    columns = []
    for b in budgets:
        rows = data["budgets"][b]
        columns.append(_bold_best([(rows[m]["ppl"], _ppl(rows[m]["ppl"])) for m in methods]))
    made = f" ({provenance(data)})" if provenance(data) else ""
    lines = [
        f"`benchmarks/results/{name}.json`{made}; dense perplexity {data['dense']['ppl']:.2f}",
        "",
        "| method | " + " | ".join(f"{float(b):.0%}" for b in budgets) + " |",
        "|---|" + "---:|" * len(budgets),
    ]
    for i, m in enumerate(methods):
        cells = [
            f"{data['budgets'][b][m]['removed']:.1%} / {columns[j][i]} / "
            f"{fmt(data['budgets'][b][m])}"
            for j, b in enumerate(budgets)
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ppl(value: float) -> str:
    return f"{value:.2f}" if value < 10_000 else f"{value:.0f}"


def default_runs() -> str:
    """``bench_default.py``: the default on the packaged models, with its cost."""
    data = _load("default")
    lines = [
        provenance(data),
        "",
        "| model | calibration (auto) | wall | peak RSS ÷ float32 checkpoint "
        "| ppl dense → pruned | decode time saved | ran |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["rows"]:
        if "failed" in r:
            lines.append(f"| {r['model']} | | {r['seconds']:.0f} s | | failed: {r['failed']} | | |")
            continue
        rss = f"{r['rss_over_checkpoint']:.2f} ({r['peak_rss'] / 1e9:.2f} GB)"
        ppl = f"{r['ppl_before']:.2f} → {r['ppl_after']:.2f}"
        ran = f"{r.get('date', data['date'])}, {r.get('commit', data['commit'])}"
        saved = f"{r['decode_saved']:.1%}" if "decode_saved" in r else "not timed"
        lines.append(
            f"| {r['model']} | {r['calibration_windows']} × 256 | {r['seconds']:.0f} s "
            f"| {rss} | {ppl} | {saved} | {ran} |"
        )
    return "\n".join(lines)


def ls_memory() -> str:
    """``bench_ls_memory.py --compare``: the ls statistics' peak over the model."""
    data = _load("ls_memory")
    lines = [
        f"{provenance(data)}; {data['blocks']} blocks",
        "",
        "| code | ls scores + ls refit, peak over the model | wall |",
        "|---|---:|---:|",
    ]
    for r in data["rows"]:
        code = "this version" if r["code"] == "this checkout" else f"before ({r['code']})"
        peak = max(r["score_extra_mb"], r["repair_extra_mb"]) * 2**20 / 1e9  # MiB → GB
        lines.append(f"| {code} | {peak:.2f} GB | {r['seconds']:.0f} s |")
    return "\n".join(lines)


def _from_bench(module: str, function: str, *results: str) -> Callable[[], str]:
    """A benchmark's own table function, called with its results files."""

    def render() -> str:
        sys.path.insert(0, str(HERE))
        return getattr(__import__(module), function)(*map(_load, results))

    return render


TABLES: dict[str, Callable[[], str]] = {
    "sweep_gemma": lambda: budget_grid("sweep_gemma", "kl"),
    "sweep": lambda: budget_grid("sweep", "kl"),
    "latency": lambda: budget_grid("latency", "speed"),
    "quality": lambda: budget_grid("quality", "accuracy"),
    "default": default_runs,
    "ls_memory": ls_memory,
    "vision": _from_bench("bench_vision", "table", "vision"),
    "sparse_kd": _from_bench("bench_sparse_kd", "doc_table", "sparse_kd"),
    "frontier": _from_bench("bench_frontier", "doc_table", "frontier_smollm2", "latency"),
    "frontier_reprice": _from_bench(
        "bench_frontier", "doc_table", "frontier_smollm2_reprice", "latency"
    ),
    "frontier_copies": _from_bench(
        "bench_frontier", "doc_table", "frontier_smollm2_copies", "latency"
    ),
    "frontier_gemma3": _from_bench("bench_frontier", "doc_table", "frontier_gemma3"),
    "additivity": _from_bench("bench_additivity", "doc_table", "additivity_smollm2"),
    "heldback": _from_bench("bench_heldback", "doc_table", "heldback_smollm2"),
    "frontier_portfolio": _from_bench(
        "bench_frontier", "doc_table", "frontier_smollm2_portfolio", "latency"
    ),
    "joint_qwen2": _from_bench("bench_joint_large", "doc_table", "joint_qwen2", "default"),
    "joint_smollm2": _from_bench("bench_joint_large", "doc_table", "joint_smollm2", "default"),
    "joint_gemma3": _from_bench("bench_joint_large", "doc_table", "joint_gemma3", "default"),
    "pipeline": _from_bench("bench_pipeline", "doc_table", "pipeline_smollm2"),
    "pipeline_qwen2": _from_bench("bench_pipeline", "doc_table", "pipeline_qwen2"),
    "recovery_budget": _from_bench("bench_recovery_budget", "table", "recovery_budget"),
    "recovery_budget_190": _from_bench("bench_recovery_budget", "table", "recovery_budget_190"),
    "healing": _from_bench("bench_healing", "doc_table", "healing_smollm2"),
    "comparison_smollm2": _from_bench("bench_quality", "doc_table", "comparison_smollm2"),
    "comparison_gemma3": _from_bench("bench_quality", "doc_table", "comparison_gemma3"),
    "depth_speedup": _from_bench("bench_depth_speedup", "table", "depth_speedup"),
    "encoder_width": _from_bench("bench_encoder_width", "table", "encoder_width"),
    "quantize_int8": _from_bench("bench_quantize", "table", "quantize_int8"),
    "repair": _from_bench("bench_repair", "table", "repair"),
    "iterative_cache": _from_bench("bench_iterative_cache", "table", "iterative_cache"),
    "llamacpp": _from_bench("bench_llamacpp", "table", "llamacpp"),
    "runtime": _from_bench("bench_runtime", "table", "runtime"),
    "fine_cost": _from_bench("bench_fine", "cost_table", "fine"),
    "fine_speedup": _from_bench("bench_fine", "speedup_table", "fine"),
    "fine_tradeoff": _from_bench("bench_fine", "tradeoff_table", "fine"),
    "fine_orders": _from_bench("bench_fine", "orders_table", "fine"),
}


def blocks(text: str) -> list[tuple[str, str]]:
    """(table name, the text between its markers) of every generated block in a page."""
    return [(m.group(2), m.group(3)) for m in BLOCK.finditer(text)]


def rewrite(text: str) -> str:
    """The page with every generated block made again from its results file."""
    return BLOCK.sub(lambda m: f"{m.group(1)}{TABLES[m.group(2)]()}\n{m.group(4)}", text)


def main() -> None:
    if sys.argv[1:] == ["--write"]:
        for page in sorted(DOCS.rglob("*.md")):
            text = page.read_text()
            if blocks(text) and rewrite(text) != text:
                page.write_text(rewrite(text))
                print(f"rewrote {page.relative_to(DOCS.parent)}")
        return
    if len(sys.argv) != 2 or sys.argv[1] not in TABLES:
        sys.exit(f"usage: tables.py NAME | --write   (NAME: {', '.join(TABLES)})")
    print(TABLES[sys.argv[1]]())


if __name__ == "__main__":
    main()
