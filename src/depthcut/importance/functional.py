"""Pure tensor functions behind the metrics (no hooks, no loops over models).

Every reduction takes a token mask [B, T] (1 = real token) so padding never counts.
"""

from __future__ import annotations

import math

import torch


def token_mask(attention_mask: torch.Tensor, tokens: str) -> torch.Tensor:
    """Boolean [B, T] mask: all real tokens, or only the last real token of each row."""
    mask = attention_mask.bool()
    if tokens == "all":
        return mask
    last = mask.long().cumsum(1).argmax(1)  # first position where the count peaks
    out = torch.zeros_like(mask)
    out[torch.arange(mask.shape[0]), last] = True
    return out & mask


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-token cosine similarity of [B, T, H] hidden states, in float64."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1, eps=1e-12)


def angular(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-token angular distance arccos(cos)/π in [0, 1]."""
    return torch.arccos(cosine(a, b).clamp(-1.0, 1.0)) / math.pi


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """(sum of values over the mask, number of masked-in entries)."""
    return float(values[mask].sum()), int(mask.sum())


def shifted_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Next-token targets and the mask of positions whose target is a real token."""
    targets = input_ids[:, 1:]
    mask = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    return targets, mask


def target_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens: str):
    """The positions whose next-token loss counts: real targets, only each row's last real
    token with ``tokens="last"``."""
    _, mask = shifted_targets(input_ids, attention_mask)
    if tokens == "last":
        mask = mask & token_mask(attention_mask, "last")[:, 1:]
    return mask


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-position negative log-likelihood of the next token, [B, T-1]."""
    logp = log_probs(logits[:, :-1])
    return -logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1).double()


def mean_nll(pairs, tokens: str = "all") -> float:
    """Mean next-token loss over the counted positions (``target_mask``) of ``(logits, batch)``
    pairs; a generator keeps one batch's logits alive at a time."""
    total, count = 0.0, 0
    for logits, batch in pairs:
        mask = target_mask(batch["input_ids"], batch["attention_mask"], tokens)
        s, n = masked_sum(token_nll(logits, batch["input_ids"]), mask)
        total, count = total + s, count + n
    return total / max(count, 1)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities in float32 (the vocabulary axis is last)."""
    return torch.log_softmax(logits.float(), dim=-1)


def token_kl(ref_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-token KL(p_ref || p), [B, T], from reference log-probs and new logits."""
    new = log_probs(logits)
    return (ref_logp.exp() * (ref_logp - new)).sum(-1, dtype=torch.float64)
