"""The joint search's documented table is the one ``bench_frontier.py --table`` prints from
its results file (and the single-family results beside it)."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_the_documented_frontier_table_is_generated_from_the_results_file():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_frontier import doc_table

    results = ROOT / "benchmarks" / "results"
    table = doc_table(
        json.loads((results / "frontier_smollm2.json").read_text()),
        json.loads((results / "latency.json").read_text()),
    )
    page = (ROOT / "docs" / "search.md").read_text()
    block = page.split("<!-- frontier table: python benchmarks/bench_frontier.py --table -->\n")[1]
    assert block.startswith(table + "\n<!-- end frontier table -->"), (
        "docs/search.md is stale: paste python benchmarks/bench_frontier.py --table"
    )
