"""The model card (``README.md``) of a saved run, in the Hugging Face format: YAML front matter
(``base_model``, ``library_name``, ``tags``, ``pipeline_tag`` and a ``model-index`` with what
depthcut measured), then what was removed and how, the measured quality and speed, and how to
load it. Numbers come from the run's own ``report.json`` (or ``eval.json``), nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ENCODER_TYPES = ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "mpnet")


def _scalar(value: Any) -> str:
    """A YAML scalar (JSON's syntax is valid YAML and quotes what needs quoting)."""
    return json.dumps(value, ensure_ascii=False)


def _evaluation(run: Path) -> tuple[dict, dict]:
    """(before, after) evaluations of the run, empty when none was made."""
    for name in ("report.json", "eval.json"):
        path = run / name
        if path.exists():
            data = json.loads(path.read_text())
            return data.get("before") or {}, data.get("after") or {}
    return {}, {}


def _metrics(after: dict) -> list[dict]:
    out = []
    if "perplexity" in after:
        p = after["perplexity"]
        name = f"perplexity (window {p['window']}, stride {p['stride']})"
        out.append({"type": "perplexity", "value": p["perplexity"], "name": name})
    for task, r in after.get("zeroshot", {}).items():
        for metric in (m for m in ("acc", "acc_norm") if m in r):
            label = f"{task} {metric} (n={r['n']})"
            out.append({"type": metric, "value": r[metric], "name": label})
    return out


def _front_matter(name: str, source: str | None, model_type: str, after: dict) -> list[str]:
    encoder = model_type in ENCODER_TYPES
    lines = ["---"]
    if source:
        lines.append(f"base_model: {_scalar(source)}")
    lines += [
        "library_name: depthcut",
        "tags: [depthcut, pruned]",
        f"pipeline_tag: {'feature-extraction' if encoder else 'text-generation'}",
    ]
    metrics = _metrics(after)
    if metrics:
        lines += ["model-index:", f"- name: {_scalar(name)}", "  results:", "  - task:"]
        lines.append(f"      type: {'feature-extraction' if encoder else 'text-generation'}")
        lines += ["    metrics:"]
        for m in metrics:
            lines.append(f"    - type: {_scalar(m['type'])}")
            lines.append(f"      value: {_scalar(m['value'])}")
            lines.append(f"      name: {_scalar(m['name'])}")
    return [*lines, "---"]


def _removed(plans: list[dict]) -> list[str]:
    lines = []
    for n, plan in enumerate(plans, 1):
        config = plan.get("run", {}).get("config", {})
        total = plan["model"]["params_all"]
        kinds: dict[str, int] = {}
        for action in plan["actions"]:
            kinds[action["kind"]] = kinds.get(action["kind"], 0) + 1
        what = ", ".join(f"{k} × {v}" for k, v in sorted(kinds.items())) or "nothing"
        step = f"Step {n}: " if len(plans) > 1 else ""
        metric = config.get("width_importance" if _width(config) else "importance")
        lines.append(
            f"- {step}{plan['removed_params']:,} of {total:,} parameters removed "
            f"({plan['removed_params'] / total:.1%}): {what}; units {config.get('units')}, "
            f"importance {metric}, repair {config.get('repair', 'none')}."
        )
    return lines


def _width(config: dict) -> bool:
    return bool(set(config.get("units", [])) & {"head", "neuron"})


def _results(before: dict, after: dict) -> list[str]:
    rows = [("parameters", f"{before['params_all']:,}", f"{after['params_all']:,}")]
    if "perplexity" in after and "perplexity" in before:
        rows.append(
            (
                "perplexity",
                f"{before['perplexity']['perplexity']:.3f}",
                f"{after['perplexity']['perplexity']:.3f}",
            )
        )
    for task, r in after.get("zeroshot", {}).items():
        b = before.get("zeroshot", {}).get(task, {})
        rows.append((f"{task} acc", f"{b.get('acc', float('nan')):.3f}", f"{r['acc']:.3f}"))
    if "latency" in after and "latency" in before:
        for batch, tps in after["latency"]["decode_tps"].items():
            dense = before["latency"]["decode_tps"][batch]
            rows.append((f"decode batch {batch} (tok/s)", f"{dense:.1f}", f"{tps:.1f}"))
    lines = ["| measure | original | pruned |", "|---|---:|---:|"]
    return lines + [f"| {m} | {b} | {a} |" for m, b, a in rows]


def model_card(run: Path, name: str, plans: list[dict], meta: dict) -> str:
    """The card's text for the run being written in ``run`` (to be named ``name``), from its
    plans, its ``depthcut.json`` meta and its evaluation files."""
    before, after = _evaluation(run)
    model = plans[0]["model"]
    lines = _front_matter(name, meta.get("source"), model.get("model_type", ""), after)
    lines += ["", f"# {name}", ""]
    lines += [
        f"A structurally pruned `{model.get('model_type', 'model')}`"
        + (f" made from `{meta['source']}`" if meta.get("source") else "")
        + " by depthcut: the units below are physically removed (tensors shrink; no masks).",
        "",
        "## What was removed",
        "",
        *_removed(plans),
    ]
    if meta.get("recovery"):
        lines += ["", f"Recovered after pruning: {json.dumps(meta['recovery'], sort_keys=True)}."]
    if meta.get("quantization"):
        lines += ["", f"Quantized: {json.dumps(meta['quantization'], sort_keys=True)}."]
    if before and after:
        lines += ["", "## Measured", "", *_results(before, after)]
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "import depthcut as dc",
        'model, tokenizer = dc.load("PATH")  # any plan; whole-block plans also load with',
        "# transformers' AutoModelForCausalLM.from_pretrained(PATH)",
        "```",
        "",
        "`depthcut export PATH --format gguf|hf|hf-hetero` writes llama.cpp and transformers "
        "checkpoints, each verified in its runtime.",
        "",
    ]
    return "\n".join(lines)


def write_card(run: Path, name: str, plans: list[dict], meta: dict) -> Path:
    """Write ``README.md`` (the model card) into ``run``."""
    path = run / "README.md"
    path.write_text(model_card(run, name, plans, meta))
    return path
