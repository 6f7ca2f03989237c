"""Width pruning of the real packaged all-MiniLM-L6-v2: embedding agreement with the dense
model on 256 held-out Wikipedia sentences (mean cosine of normalised mean-pooled embeddings)."""

from __future__ import annotations

import copy

import torch

import depthcut as dc
from depthcut.errors import DepthcutError
from depthcut.eval.encoder import embedding_agreement, heldout_sentences
from depthcut.models import load_encoder
from results_file import provenance, show

CALIBRATION = 256  # wiki paragraphs: enough tokens for the refit of a 1,536-wide FFN
CASES = (
    (("head",), {"heads": 0.3}),
    (("neuron",), {"neurons": 0.3}),
    (("head", "neuron"), {"heads": 0.25, "neurons": 0.25}),
)


def agreements(model, tok, plan, calib, sentences) -> dict:
    """Embedding agreement of the plan's model unrepaired and after the ls refit (or why the
    refit was refused)."""
    out = {"agreement": embedding_agreement(model, dc.apply(model, plan), tok, sentences)}
    work = copy.deepcopy(model)
    try:
        dc.repair(work, plan, calib, "ls", progress=False)
    except DepthcutError as err:
        return out | {"ls_refused": str(err)}
    repaired = dc.apply(work, plan, inplace=True)
    return out | {"agreement_ls": embedding_agreement(model, repaired, tok, sentences)}


def measure() -> dict:
    """Each unit kind × width metric: parameters removed and embedding agreement, without and
    with the ls refit."""
    torch.set_num_threads(2)
    model, tok = load_encoder("minilm-l6")
    sentences = heldout_sentences("wiki", 256)
    calib_text = dc.data.text_split("wiki", "calibration").split("\n\n")[:CALIBRATION]
    calib = dc.data.from_texts(tok, calib_text, seq_len=128)
    total = sum(p.numel() for p in model.parameters())
    rows = []
    for units, kw in CASES:
        for metric in ("magnitude", "output_norm", "activation_frequency", "ls"):
            if metric == "activation_frequency" and "neuron" not in units:
                continue
            cfg = dc.PruneConfig(
                units=units,
                width_importance=metric,
                protect_first=1,
                protect_last=1,
                repair="none",
                **kw,
            )
            plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg)
            rows.append(
                {"units": "+".join(units), "fractions": kw, "metric": metric}
                | {"removed": plan.removed_params / total}
                | agreements(model, tok, plan, calib, sentences)
            )
    return {"model": "minilm-l6", "sentences": len(sentences), "texts": CALIBRATION, "rows": rows}


def table(data: dict) -> str:
    """Embedding agreement per unit kind and metric, without and (where it ran) with the ls
    refit; a refit refused everywhere is one line under the table."""
    refit = any("agreement_ls" in r for r in data["rows"])
    lines = [
        f"{provenance(data)}: all-MiniLM-L6-v2, mean cosine of normalised mean-pooled "
        f"embeddings against the dense model on {data['sentences']} held-out sentences; "
        f"calibration: {data['texts']} wiki paragraphs of up to 128 tokens",
        "",
        "| units | share removed | metric | params removed | agreement |"
        + (" with the ls refit |" if refit else ""),
        "|---|---|---|---:|---:|" + ("---:|" if refit else ""),
    ]
    for r in data["rows"]:
        share = ", ".join(f"{v:.0%} of {k}" for k, v in r["fractions"].items())
        ls = f" {r['agreement_ls']:.4f} |" if "agreement_ls" in r else " refused |"
        lines.append(
            f"| {r['units']} | {share} | {r['metric']} | {r['removed']:.1%} "
            f"| {r['agreement']:.4f} |" + (ls if refit else "")
        )
    if not refit:
        lines.append(f"\nThe ls refit, refused: {data['rows'][0]['ls_refused']}")
    return "\n".join(lines)


if __name__ == "__main__":
    show("encoder_width", table, measure)
