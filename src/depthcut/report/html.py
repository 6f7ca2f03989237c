"""``depthcut report RUN_DIR``: one self-contained HTML page (images inlined as data URIs).

Sections, always present (with a note saying how to get what a run does not have):
importance heatmap, pruned-structure diagram, before/after table, trade-off curves
(the run's recovery/iterative curves, a sweep's curves with ``--sweep``, or the run's own
dense → pruned point) and greedy generation samples before/after with the repetition check.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from depthcut.planning.plan import Plan
from depthcut.report.structure import plan_structure, plot_structure
from depthcut.report.write import comparison_rows

SECTIONS = ("importance", "structure", "before-after", "curves", "generations")
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%}.note{color:#777}
.loop{color:#c62828;font-weight:bold}pre{white-space:pre-wrap;background:#f6f6f6;padding:.6em}"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def image(path: Path, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{data_uri(path)}">'


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _importance(run: Path) -> str:
    png = run / "importance.png"
    return image(png, "importance heatmap") if png.exists() else note("no scores in this run")


def _structure(run: Path, report: dict, tmp: Path) -> str:
    png = run / "structure.png"
    if not png.exists():
        data = plan_structure(Plan.from_dict(report["plan"]))
        if data is None:
            return note("a CNN plan: draw it with depthcut.report.structure and the model")
        png = plot_structure(data, tmp / "structure.png")
    return image(png, "pruned structure")


def _table(report: dict) -> str:
    before, after = report.get("before"), report.get("after")
    if not before or not after:
        return note("no before/after evaluation in this run")
    rows = "".join(
        f"<tr><td>{html.escape(m)}</td><td>{b}</td><td>{a}</td></tr>"
        for m, b, a in comparison_rows(before, after)
    )
    return f"<table><tr><th>metric</th><th>before</th><th>after</th></tr>{rows}</table>"


def _curves(run: Path, report: dict, sweep: Path | None, tmp: Path) -> str:
    pngs = [run / n for n in ("recovery.png", "history.png") if (run / n).exists()]
    if sweep is not None:
        pngs += sorted(Path(sweep).glob("sweep_*.png"))
    if not pngs:
        png = plot_point(report, tmp / "tradeoff.png")
        if png is None:
            return note(
                "no curves: run `depthcut sweep` and pass --sweep DIR, or prune with --perplexity"
            )
        pngs = [png]
    return "\n".join(image(p, p.stem) for p in pngs)


def plot_point(report: dict, path: Path) -> Path | None:
    """Dense → pruned in the (params removed, perplexity) plane, when both were measured."""
    before, after = report.get("before") or {}, report.get("after") or {}
    if "perplexity" not in before or "perplexity" not in after:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    removed = 1 - after["params_all"] / before["params_all"]
    ppl = [before["perplexity"]["perplexity"], after["perplexity"]["perplexity"]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([0, removed * 100], ppl, "o-")
    ax.set_xlabel("parameters removed (%)")
    ax.set_ylabel("perplexity")
    ax.set_title("this run: dense → pruned")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _generations(run: Path) -> str:
    path = run / "generations.json"
    if not path.exists():
        return note("no samples: run `depthcut report RUN_DIR --generate`")
    rows = []
    for item in json.loads(path.read_text()):
        cells = []
        for side in ("before", "after"):
            s = item.get(side)
            if s is None:
                cells.append("<td></td>")
                continue
            flag = ' <span class="loop">looping</span>' if s["looping"] else ""
            share = f"repeated 4-grams {s['repeated_4gram_share']:.2f}{flag}"
            cells.append(f"<td><pre>{html.escape(s['continuation'])}</pre>{share}</td>")
        rows.append(f"<tr><td>{html.escape(item['prompt'])}</td>{''.join(cells)}</tr>")
    head = "<tr><th>prompt</th><th>before</th><th>after</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def load_report(run: Path) -> dict:
    """report.json of a one-shot run; for an iterative prune → recover run, the last plan and
    the first/last rows of history.json (its curve is history.png)."""
    if (run / "report.json").exists():
        return json.loads((run / "report.json").read_text())
    if (run / "history.json").exists():
        from depthcut.io import read_meta

        rows = json.loads((run / "history.json").read_text())
        keys = ("params_all", "params_non_embedding")
        before, after = ({k: r[k] for k in keys} for r in (rows[0], rows[-1]))
        return {"plan": read_meta(run)["plans"][-1], "before": before, "after": after}
    from depthcut.errors import DepthcutError

    raise DepthcutError(f"{run}: no report.json or history.json (not a depthcut prune output)")


def render(run: Path, sweep: Path | None, tmp: Path) -> str:
    report = load_report(run)
    plan = report["plan"]
    title = f"depthcut report: {plan['model']['model_type']}"
    before, after = report.get("before") or {}, report.get("after") or {}
    removed = 1 - after.get("params_all", 0) / before["params_all"] if after else 0.0
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>{len(plan['actions'])} actions, {removed:.1%} of parameters removed.</p>",
        section("importance", "Importance heatmap", _importance(run)),
        section("structure", "Pruned structure", _structure(run, report, tmp)),
        section("before-after", "Before / after", _table(report)),
        section("curves", "Trade-off curves", _curves(run, report, sweep, tmp)),
        section("generations", "Generation samples", _generations(run)),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_html(run_dir: str | Path, sweep: str | Path | None = None) -> Path:
    """Write ``report.html`` into the run directory (atomically) and return its path."""
    import tempfile

    run = Path(run_dir)
    load_report(run)  # refuse before writing anything
    with tempfile.TemporaryDirectory() as tmp:
        text = render(run, Path(sweep) if sweep else None, Path(tmp))
    out = run / "report.html"
    partial = run / ".report.html.tmp"
    partial.write_text(text, encoding="utf-8")
    partial.replace(out)
    return out


def write_generations(
    run_dir: str | Path, base=None, new_tokens: int = 48, tokenizer: str | None = None
) -> Path:
    """Greedy samples of the pruned run and (if given or recorded) its source model."""
    from depthcut.eval.generation import generate_samples
    from depthcut.io import read_meta
    from depthcut.models import load_model

    run = Path(run_dir)
    model, tok = load_model(str(run), tokenizer=tokenizer)
    source = base or read_meta(run).get("source")
    after = generate_samples(model, tok, new_tokens=new_tokens)
    dense = load_model(source, need_tokenizer=False)[0] if source else None
    before = generate_samples(dense, tok, new_tokens=new_tokens) if dense is not None else None
    items = [
        {
            "prompt": a.prompt,
            "after": a.to_dict(),
            "before": before[i].to_dict() if before else None,
        }
        for i, a in enumerate(after)
    ]
    path = run / "generations.json"
    path.write_text(json.dumps(items, indent=2) + "\n")
    return path
