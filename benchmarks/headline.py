"""The README's headline table, generated from ``benchmarks/results/quality.json`` (written by
``bench_quality.py --budgets 0.1,0.25,0.4 --limit 50 --methods ShortGPT,"depthcut neurons (ls"
--plot benchmarks/results/quality``, as ``make bench`` runs it). ``python benchmarks/headline.py``
prints it; a test checks the README holds it verbatim."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "quality.json"
METHODS = {
    "ShortGPT (BI blocks)": "ShortGPT (blocks by BI)",
    "ShortGPT + ls": "ShortGPT + least-squares repair",
    "depthcut neurons (ls-aware) + ls": "**depthcut's default** (ls-aware neurons + ls refit)",
}


def table(results: dict | None = None) -> str:
    """Held-out perplexity of SmolLM2-135M at each budget (fraction of non-embedding params)."""
    data = results or json.loads(RESULTS.read_text())
    budgets = list(data["budgets"])
    head = "| method | " + " | ".join(f"{float(b):.0%} removed" for b in budgets) + " |"
    lines = [head, "|---|" + "---:|" * len(budgets)]
    lines.append(f"| dense | {data['dense']['ppl']:.2f} |" + " |" * (len(budgets) - 1))
    for key, label in METHODS.items():
        cells = [f"{data['budgets'][b][key]['ppl']:.2f}" for b in budgets]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
