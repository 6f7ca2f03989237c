"""docs/recovery.md's sparse-distillation table is the one ``bench_sparse_kd.py --table``
prints from its results file."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
BEGIN = "<!-- sparse kd table: python benchmarks/bench_sparse_kd.py --table -->\n"


def test_the_documented_sparse_kd_table_is_generated_from_the_results_file():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_sparse_kd import doc_table

    results = json.loads((ROOT / "benchmarks" / "results" / "sparse_kd.json").read_text())
    block = (ROOT / "docs" / "recovery.md").read_text().split(BEGIN)[1]
    assert block.startswith(doc_table(results) + "\n<!-- end sparse kd table -->"), (
        "docs/recovery.md is stale: paste python benchmarks/bench_sparse_kd.py --table"
    )
