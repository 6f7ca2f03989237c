"""Several prune outputs side by side: the method each ran, what it removed, and what it cost
and bought (``depthcut compare RUN RUN …``; ``make demo`` compares the default with blocks)."""

from __future__ import annotations

from pathlib import Path

from depthcut.files import read_json
from depthcut.report.write import timing_warnings


def method_of(config: dict) -> str:
    """A short name of a recorded PruneConfig: units, their metric, the repair."""
    units = config.get("units", [])
    width = {"head", "neuron"} & set(units)
    metric = config.get("width_importance") if width and len(width) == len(units) else None
    name = f"{'+'.join(units)} by {metric or config.get('importance')}"
    repair = config.get("repair", "none")
    return name if repair == "none" else f"{name}, {repair} repair"


def _decode_speedup(before: dict, after: dict) -> str:
    b, a = before.get("latency"), after.get("latency")
    if not b or not a:
        return ""
    batch = min(b["decode_tps"], key=int)
    mark = " ⚠" if timing_warnings(before, after) else ""
    return f"{a['decode_tps'][batch] / b['decode_tps'][batch]:.2f}×{mark}"


def _perplexity(before: dict, after: dict) -> str:
    if "perplexity" not in before or "perplexity" not in after:
        return ""
    return f"{before['perplexity']['perplexity']:.2f} → {after['perplexity']['perplexity']:.2f}"


def run_row(path: Path) -> tuple[str, ...]:
    """(run, method, params removed, perplexity, decode speed-up) of one prune output."""
    report = read_json(Path(path) / "report.json", "depthcut prune report")
    plan, before, after = report["plan"], report.get("before") or {}, report.get("after") or {}
    removed = plan["removed_params"] / plan["model"]["params_all"]
    config = plan.get("run", {}).get("config", {})
    speed = _decode_speedup(before, after) if before and after else ""
    ppl = _perplexity(before, after) if before and after else ""
    return (Path(path).name, method_of(config), f"{removed:.1%}", ppl, speed)


def runs_table(paths: list[Path]) -> str:
    """A markdown table of the runs, one row each, in the order given."""
    rows = [run_row(p) for p in paths]
    lines = [
        "| run | method | params removed | perplexity | decode speed-up (batch 1) |",
        "|---|---|---:|---:|---:|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
