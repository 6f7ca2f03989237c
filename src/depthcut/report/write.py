"""report.json + report.md (+ importance.png) for a pruning run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from depthcut.kinds import Kind
from depthcut.planning.plan import Plan
from depthcut.report.heatmap import plot_heatmap
from depthcut.report.structure import (
    joint_markdown,
    joint_structure,
    plan_structure,
    plot_joint,
    plot_structure,
    structure_markdown,
)
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
        rows += _latency_rows(before, after)
    return rows


def _latency_rows(before: dict, after: dict) -> list[tuple[str, str, str]]:
    """Prefill and decode rows; every figure marked ⚠ when ``timing_warnings`` has any."""
    b, a = before["latency"], after["latency"]
    mark = " ⚠" if timing_warnings(before, after) else ""
    rows = [
        (f"prefill {n} tok (ms)", f"{ms:.1f}{mark}", f"{a['prefill_ms'][n]:.1f}{mark}")
        for n, ms in b["prefill_ms"].items()
    ]
    rows += [
        (f"decode batch {n} (tok/s)", f"{tps:.1f}{mark}", f"{a['decode_tps'][n]:.1f}{mark}")
        for n, tps in b["decode_tps"].items()
    ]
    return rows


def timing_warnings(before: dict, after: dict) -> list[str]:
    """Why the before / after timings should not be trusted: what the measurement itself
    flagged (a busy machine, spread between repeats), and a pruned model measured slower
    than the dense one, which removing weights cannot cause."""
    b, a = before.get("latency"), after.get("latency")
    if not b or not a:
        return []
    reasons = list(dict.fromkeys([*b.get("unreliable", []), *a.get("unreliable", [])]))
    slower = _slower_after_pruning(before, after)
    if slower:
        reasons.append(
            f"the pruned model measured slower than the dense one ({', '.join(slower)}): "
            "timing noise, not the pruning"
        )
    return reasons


def _slower_after_pruning(before: dict, after: dict) -> list[str]:
    """Figures where a model with fewer parameters measured > 5% slower than the dense one."""
    if after["params_all"] >= before["params_all"]:
        return []
    b, a = before["latency"], after["latency"]
    out = [f"prefill {n}" for n, ms in a["prefill_ms"].items() if ms > 1.05 * b["prefill_ms"][n]]
    return out + [
        f"decode b{n}" for n, t in a["decode_tps"].items() if t * 1.05 < b["decode_tps"][n]
    ]


def comparison(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The before / after table, followed by one line per timing warning."""
    warnings = [f"⚠ timings unreliable: {r}" for r in timing_warnings(before, after)]
    return "\n".join([table(comparison_rows(before, after)), *warnings])


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
    joint = joint_structure(plan)
    if joint is not None:
        data["joint"] = joint
        paths["joint"] = plot_joint(joint, out / "options.png")
    paths["json"].write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    text = markdown(plan, scores, before, after)
    if structure is not None:
        text += "\n## Pruned structure\n\n" + structure_markdown(structure)
        text += "\n\n![structure](structure.png)\n"
    if joint is not None:
        text += "\n## Chosen option per block (joint search)\n\n" + joint_markdown(joint)
        text += "\n\n![options](options.png)\n"
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
        parts += ["", "## Before / after", "", comparison(before, after)]
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
