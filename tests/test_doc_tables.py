"""Every benchmark table of the documentation is generated from its results file: the text
between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` is what
``python benchmarks/tables.py NAME`` prints (``--write`` regenerates them all)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import tables  # noqa: E402

PAGES = sorted((ROOT / "docs").rglob("*.md"))
GENERATED = [(p, name, text) for p in PAGES for name, text in tables.blocks(p.read_text())]


@pytest.mark.parametrize(
    ("page", "name", "text"), GENERATED, ids=[f"{p.name}:{n}" for p, n, _ in GENERATED]
)
def test_the_page_holds_the_table_its_results_file_gives(page, name, text):
    assert text == tables.TABLES[name]() + "\n", (
        f"{page.relative_to(ROOT)} is stale: run python benchmarks/tables.py --write"
    )


def test_every_generated_table_appears_in_the_documentation():
    assert {name for _, name, _ in GENERATED} == set(tables.TABLES)


def test_a_changed_results_file_changes_the_table(monkeypatch):
    before = tables.TABLES["latency"]()
    data = json.loads((tables.RESULTS / "latency.json").read_text())
    data["budgets"]["0.1"]["ShortGPT + ls"]["ppl"] = 1.5
    monkeypatch.setattr(tables, "_load", lambda name: data)
    grid = tables.budget_grid("latency", "speed")
    assert "/ **1.50** /" in grid and grid != before


def test_write_regenerates_a_stale_block():
    page = "x\n<!-- generated: ls_memory -->\nold\n<!-- end generated -->\ny\n"
    assert tables.rewrite(page) == (
        f"x\n<!-- generated: ls_memory -->\n{tables.ls_memory()}\n<!-- end generated -->\ny\n"
    )


def hand_written_tables(text: str) -> list[str]:
    """The first line of every Markdown table outside generated blocks that no
    ``<!-- hand-written: why -->`` comment (on one of the three lines before it) declares."""
    outside = tables.BLOCK.sub("", text).split("\n")
    found = []
    for i, line in enumerate(outside):
        starts = line.startswith("|") and i + 1 < len(outside) and outside[i + 1].startswith("|-")
        if starts and not any("<!-- hand-written:" in ln for ln in outside[max(0, i - 3) : i]):
            found.append(line)
    return found


@pytest.mark.parametrize("page", sorted((ROOT / "docs" / "benchmarks").glob("*.md")), ids=str)
def test_benchmark_pages_hold_only_generated_or_declared_tables(page):
    assert hand_written_tables(page.read_text()) == [], (
        f"{page.name}: a table neither generated from a results file nor declared hand-written"
    )


def test_perplexity_at_equal_speed_is_interpolated_in_log_and_never_extrapolated():
    """The frontier page compares methods at the same measured speed-up: between two measured
    points the log-perplexity is linear in the speed-up, beyond a curve's end there is none."""
    import bench_frontier

    curve = [(1.2, 20.0), (1.0, 10.0), (1.5, 80.0)]  # any order
    assert bench_frontier.at_speed(curve, 1.1) == pytest.approx(200**0.5, rel=1e-12)
    assert bench_frontier.at_speed(curve, 1.2) == pytest.approx(20.0, rel=1e-12)
    assert bench_frontier.at_speed(curve, 1.35) == pytest.approx(40.0, rel=1e-12)
    assert bench_frontier.at_speed(curve, 1.51) is None
    results = {"dense": {"ppl": 10.0}, "frontier": {"0.1": {"speed": 1.5, "ppl": 20.0}}}
    single = {"budgets": {"0.1": {"other": {"speed": 1.3, "ppl": 20.0}}}}
    text = "\n".join(bench_frontier.speed_table(results, single))
    # joint 10·2^((s-1)/0.5), other 10·2^((s-1)/0.3): gap ratios 0.3/0.5 and 0.6/1
    assert "| joint | **12.31** | **15.16** | **20.00** |" in text
    assert "| other | 14.14 | 20.00 | — |" in text
    assert "0.60 at 1.15×, 0.60 at 1.30×." in text
