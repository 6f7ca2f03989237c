"""report.json + report.md (+ importance.png) for a pruning run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from depthcut.kinds import Kind
from depthcut.planning.plan import Plan
from depthcut.report.heatmap import plot_heatmap
from depthcut.report.structure import plan_structure, plot_structure, structure_markdown
from depthcut.scores import Scores


def comparison_rows(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, before, after) rows for whatever both evaluations measured."""
    rows = [
        ("params (all)", f"{before['params_all']:,}", f"{after['params_all']:,}"),
        (
            "params (non-embedding)",
            f"{before['params_non_embedding']:,}",
            f"{after['params_non_embedding']:,}",
        ),
    ]
    if "perplexity" in before and "perplexity" in after:
        b, a = before["perplexity"], after["perplexity"]
        proto = f" (window {b['window']}, stride {b['stride']}, bos {b['bos']})"
        rows.append(("perplexity" + proto, f"{b['perplexity']:.3f}", f"{a['perplexity']:.3f}"))
    for task, b in before.get("zeroshot", {}).items():
        a = after.get("zeroshot", {}).get(task)
        if a is not None:
            for metric in (m for m in ("acc", "acc_norm") if m in b):
                rows.append(
                    (f"{task} {metric} (n={b['n']})", f"{b[metric]:.3f}", f"{a[metric]:.3f}")
                )
    if "latency" in before and "latency" in after:
        b, a = before["latency"], after["latency"]
        for length, ms in b["prefill_ms"].items():
            rows.append(
                (f"prefill {length} tok (ms)", f"{ms:.1f}", f"{a['prefill_ms'][length]:.1f}")
            )
        for batch, tps in b["decode_tps"].items():
            rows.append(
                (f"decode batch {batch} (tok/s)", f"{tps:.1f}", f"{a['decode_tps'][batch]:.1f}")
            )
    return rows


def table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| metric | before | after |", "|---|---:|---:|"]
    lines += [f"| {m} | {b} | {a} |" for m, b, a in rows]
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    plan: Plan,
    scores: Scores | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    model=None,
) -> dict[str, Path]:
    out = Path(out_dir)
    paths = {"json": out / "report.json", "md": out / "report.md"}
    data = {"plan": plan.to_dict(), "before": before, "after": after}
    if scores is not None and scores.units:
        data["scores"] = {
            "metric": scores.metric,
            "unit_scores": scores.unit_scores,
            "cost": scores.cost,
        }
        paths["png"] = plot_heatmap(scores, plan, out / "importance.png")
    structure = plan_structure(plan, model) if _is_fine(plan) else None
    if structure is not None:
        data["structure"] = structure
        paths["structure"] = plot_structure(structure, out / "structure.png")
    paths["json"].write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    text = markdown(plan, scores, before, after)
    if structure is not None:
        text += "\n## Pruned structure\n\n" + structure_markdown(structure)
        text += "\n\n![structure](structure.png)\n"
    paths["md"].write_text(text)
    return paths


def _is_fine(plan: Plan) -> bool:
    return any(a.kind is Kind.FINE for a in plan.actions)


def markdown(plan: Plan, scores, before, after) -> str:
    cfg = plan.run.get("config", {})
    parts = [
        f"# depthcut report: {plan.model['model_type']}",
        "",
        f"Metric `{plan.run.get('metric')}`, strategy `{cfg.get('strategy')}`, units "
        f"`{cfg.get('units')}`, budget `{cfg.get('budget')}`.",
        "",
        "## Removed",
        "```",
        plan.summary(),
        "```",
    ]
    if before and after:
        parts += ["", "## Before / after", "", table(comparison_rows(before, after))]
    if scores is not None and scores.units:
        parts += ["", "![importance](importance.png)"]
        fe = scores.cost.get("forward_equivalents")
        if fe is not None:
            parts += [
                "",
                f"Scoring cost: {fe:.2f} forward-equivalents, "
                f"{scores.cost.get('seconds', 0):.1f} s.",
            ]
    return "\n".join(parts) + "\n"


def iterative_markdown(history: list[dict], recipe: dict) -> str:
    """report.md of an iterative prune → recover run: one row per round, and the curve."""
    rec = recipe.get("recover") or {}
    lines = [
        "# depthcut report: iterative prune → recover",
        "",
        f"{recipe['steps']} rounds; units `{recipe['prune']['units']}`, metric "
        f"`{recipe['prune']['importance']}`, budget `{recipe['prune']['budget']}`; recovery "
        f"`{rec.get('method', 'none')}` / `{rec.get('loss', '-')}`.",
        "",
        "| round | params (all) | removed | ppl after pruning | ppl after recovery |",
        "|---:|---:|---:|---:|---:|",
    ]
    base = history[0]["params_all"]
    for h in history:
        rec_ppl = "" if h.get("ppl_recovered") is None else f"{h['ppl_recovered']:.3f}"
        lines.append(
            f"| {h['step']} | {h['params_all']:,} | {1 - h['params_all'] / base:.1%} "
            f"| {h['ppl_pruned']:.3f} | {rec_ppl} |"
        )
    return "\n".join(lines + ["", "![history](history.png)", ""])
