"""Encoder quality without labels: agreement of sentence embeddings with the dense model.

Embeddings are mean-pooled over real tokens and L2-normalised (the sentence-transformers
recipe of all-MiniLM-L6-v2). The score is the mean cosine between the pruned and the dense
embedding of each held-out sentence (1.0 = identical).
"""

from __future__ import annotations

import re

import torch

from depthcut.data import text_split


def heldout_sentences(source: str = "wiki", n: int = 256) -> list[str]:
    """``n`` sentences of 6-60 words from the evaluation split (never calibration text)."""
    text = text_split(source, "evaluation")
    sentences = re.split(r"(?<=[.!?])\s+", text.replace("\n", " "))
    return [s for s in sentences if 6 <= len(s.split()) <= 60][:n]


def embed(model, tokenizer, sentences: list[str], batch_size: int = 32) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch_size):
            batch = tokenizer(
                sentences[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out)


def embedding_agreement(dense, pruned, tokenizer, sentences: list[str]) -> float:
    """Mean cosine between dense and pruned sentence embeddings."""
    a, b = embed(dense, tokenizer, sentences), embed(pruned, tokenizer, sentences)
    return float((a * b).sum(-1).mean())
