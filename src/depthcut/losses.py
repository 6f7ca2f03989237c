"""The math of recovery, apart from the training engine: next-token cross-entropy, and
distillation KL to a live teacher's full distribution or to stored top-k targets. Each
averages over real (unpadded) positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _targets_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions t whose next token t+1 is real (and t itself is real)."""
    return (attention_mask[:, :-1] * attention_mask[:, 1:]).bool()


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Mean next-token cross-entropy over real targets."""
    mask = _targets_mask(attention_mask)
    pred = logits[:, :-1][mask]
    return F.cross_entropy(pred.float(), input_ids[:, 1:][mask])


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL(teacher ‖ student) of the temperature-softened next-token distributions, times T²
    (Hinton et al.) so gradients keep their scale; mean over real positions."""
    mask = attention_mask.bool()
    s = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits[mask].float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    return kl.mean() * temperature**2


def sparse_kd_loss(
    student_logits: torch.Tensor,
    indices: torch.Tensor,
    logprobs: torch.Tensor,
    tail: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """KL(teacher ‖ student) over k + 1 outcomes — the teacher's stored top-k tokens
    (``indices``, ``logprobs`` [B, T, k]) and "any other token" (log-mass ``tail`` [B, T]) —
    mean over real positions. It equals the full KL when the tail mass is 0 and bounds it
    from below otherwise (the tail's distribution is not compared)."""
    mask = attention_mask.bool()
    s = F.log_softmax(student_logits[mask].float(), dim=-1)
    idx, t, t_tail = indices[mask], logprobs[mask].float(), tail[mask].float()
    s_k = s.gather(-1, idx)
    s_tail = torch.logsumexp(s.scatter(-1, idx, float("-inf")), dim=-1)
    floor = -1e4  # an empty tail (k = vocabulary) contributes 0, not nan
    t_tail, s_tail = t_tail.clamp(min=floor), s_tail.clamp(min=floor)
    kl = (t.exp() * (t - s_k)).sum(-1) + t_tail.exp() * (t_tail - s_tail)
    return kl.mean()
