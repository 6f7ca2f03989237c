"""Width pruning of the real packaged all-MiniLM-L6-v2: embedding agreement with the dense
model on 256 held-out Wikipedia sentences (mean cosine of normalised mean-pooled embeddings)."""

from __future__ import annotations

import torch

import depthcut as dc
from depthcut.errors import DepthcutError
from depthcut.eval.encoder import embedding_agreement, heldout_sentences
from depthcut.models import load_encoder
from results_file import provenance, show

CASES = (
    (("head",), {"heads": 0.3}),
    (("neuron",), {"neurons": 0.3}),
    (("head", "neuron"), {"heads": 0.25, "neurons": 0.25}),
)


def measure() -> dict:
    """Each unit kind × width metric: parameters removed and embedding agreement."""
    torch.set_num_threads(2)
    model, tok = load_encoder("minilm-l6")
    sentences = heldout_sentences("wiki", 256)
    calib_text = dc.data.text_split("wiki", "calibration").split("\n\n")[:64]
    calib = dc.data.from_texts(tok, calib_text, seq_len=128)
    total = sum(p.numel() for p in model.parameters())
    rows = []
    for units, kw in CASES:
        for metric in ("magnitude", "output_norm", "activation_frequency", "ls"):
            if metric == "activation_frequency" and "neuron" not in units:
                continue
            cfg = dc.PruneConfig(
                units=units, width_importance=metric, protect_first=1, protect_last=1, **kw
            )
            row = {"units": "+".join(units), "fractions": kw, "metric": metric}
            try:
                plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg)
            except DepthcutError as err:
                rows.append(row | {"refused": str(err)})
                continue
            agree = embedding_agreement(model, dc.apply(model, plan), tok, sentences)
            rows.append(row | {"removed": plan.removed_params / total, "agreement": agree})
    return {"model": "minilm-l6", "sentences": len(sentences), "rows": rows}


def table(data: dict) -> str:
    """Embedding agreement per unit kind and metric, no repair."""
    lines = [
        f"{provenance(data)}: all-MiniLM-L6-v2, mean cosine of normalised mean-pooled "
        f"embeddings against the dense model on {data['sentences']} held-out sentences, no repair",
        "",
        "| units | share removed | metric | params removed | embedding agreement |",
        "|---|---|---|---:|---:|",
    ]
    for r in data["rows"]:
        share = ", ".join(f"{v:.0%} of {k}" for k, v in r["fractions"].items())
        if "refused" in r:
            lines.append(f"| {r['units']} | {share} | {r['metric']} | refused: {r['refused']} | |")
            continue
        lines.append(
            f"| {r['units']} | {share} | {r['metric']} | {r['removed']:.1%} "
            f"| {r['agreement']:.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    show("encoder_width", table, measure)
