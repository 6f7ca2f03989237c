"""Width pruning of the real packaged all-MiniLM-L6-v2: embedding agreement with the dense
model on 256 held-out Wikipedia sentences (mean cosine of normalised mean-pooled embeddings)."""

from __future__ import annotations

import torch

import depthcut as dc
from depthcut.eval.encoder import embedding_agreement, heldout_sentences
from depthcut.models import load_encoder


def main() -> None:
    torch.set_num_threads(2)
    model, tok = load_encoder("minilm-l6")
    sentences = heldout_sentences("wiki", 256)
    calib_text = dc.data.text_split("wiki", "calibration").split("\n\n")[:64]
    calib = dc.data.from_texts(tok, calib_text, seq_len=128)
    total = sum(p.numel() for p in model.parameters())
    print("| units | metric | params removed | embedding agreement |")
    print("|---|---|---:|---:|")
    for units, kw in (
        (("head",), {"heads": 0.3}),
        (("neuron",), {"neurons": 0.3}),
        (("head", "neuron"), {"heads": 0.25, "neurons": 0.25}),
    ):
        for metric in ("magnitude", "output_norm", "activation_frequency"):
            if metric == "activation_frequency" and "neuron" not in units:
                continue
            cfg = dc.PruneConfig(
                units=units, width_importance=metric, protect_first=1, protect_last=1, **kw
            )
            plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg)
            agree = embedding_agreement(model, dc.apply(model, plan), tok, sentences)
            print(
                f"| {'+'.join(units)} {kw} | {metric} | {plan.removed_params / total:.1%} "
                f"| {agree:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
