"""The math of recovery, apart from the loop: next-token cross-entropy and distillation KL.
Both average over real (unpadded) target positions only."""

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


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * min(1.0, progress))).item())
