"""Perplexity on held-out text with an explicit protocol (window, stride, BOS).

Windows of ``window`` tokens start every ``stride`` tokens; each token is scored once, in the
first window that predicts it with the most context (the Hugging Face sliding-window recipe).
With ``bos`` the tokenizer's BOS token is prepended to every window (it is context, never a
target). The result carries the protocol so that numbers are never quoted without it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from depthcut.devices import device_of
from depthcut.errors import CalibrationError


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float
    tokens: int
    window: int
    stride: int
    bos: bool
    windows: int

    def describe(self) -> str:
        return (
            f"ppl {self.perplexity:.3f} (window {self.window}, stride {self.stride}, "
            f"bos {'on' if self.bos else 'off'}, {self.tokens} tokens)"
        )

    def to_dict(self) -> dict:
        return asdict(self)


ROWS = 64  # rows of the vocabulary-wide log-softmax held at once (memory, not speed)


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_targets) of each window; every token after the first is a target once."""
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        targets = end - max(prev_end, begin + 1) if begin == 0 else end - prev_end
        if targets > 0:
            out.append((begin, end, targets))
        prev_end = end
        if end == n_tokens:
            break
    return out


def protocol_spans(
    n_tokens: int, window: int, stride: int | None, max_windows: int | None
) -> tuple[int, list[tuple[int, int, int]]]:
    """(stride, the windows measured) of a protocol, refused when it cannot be measured."""
    stride = stride or window
    if window < 2 or stride < 1 or stride > window:
        raise CalibrationError(f"window={window}, stride={stride}: need 2 <= window, stride")
    spans = windows(n_tokens, window, stride)[:max_windows]
    if not spans:
        raise CalibrationError("evaluation text is empty")
    return stride, spans


def window_ids(ids: torch.Tensor, begin: int, end: int, bos_id: int | None) -> torch.Tensor:
    """The tokens one window runs on (BOS prepended when set)."""
    chunk = ids[begin:end]
    return chunk if bos_id is None else torch.cat([torch.tensor([bos_id]), chunk])


def perplexity(
    model,
    token_ids: list[int] | torch.Tensor,
    window: int = 512,
    stride: int | None = None,
    bos_id: int | None = None,
    max_windows: int | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on a token stream (``bos_id`` set → BOS prepended per window)."""
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    stride, spans = protocol_spans(len(ids), window, stride, max_windows)
    total, count = 0.0, 0
    for begin, end, n_targets in tqdm(spans, desc="perplexity", disable=not progress):
        total += _window_nll(model, window_ids(ids, begin, end, bos_id), n_targets)
        count += n_targets
    return result_of(total, count, window, stride, bos_id, len(spans))


def result_of(
    total: float, count: int, window: int, stride: int, bos_id: int | None, n_windows: int
) -> PerplexityResult:
    nll = total / count
    return PerplexityResult(
        math.exp(nll), nll, count, window, stride, bos_id is not None, n_windows
    )


def _window_nll(model, chunk: torch.Tensor, n_targets: int) -> float:
    """Summed NLL of the last ``n_targets`` tokens of ``chunk``."""
    chunk = chunk.to(device_of(model))
    with torch.no_grad():
        logits = model(input_ids=chunk.unsqueeze(0), use_cache=False).logits[0]
    return logits_nll(logits, chunk, n_targets)


def logits_nll(logits: torch.Tensor, chunk: torch.Tensor, n_targets: int) -> float:
    """Summed NLL of the last ``n_targets`` tokens of ``chunk`` under ``logits`` ([T, V], one
    row per position of ``chunk``), in float64 a slice of rows at a time."""
    logits, targets = logits[:-1][-n_targets:], chunk[1:][-n_targets:]
    total = 0.0
    for rows in range(0, n_targets, ROWS):
        logp = torch.log_softmax(logits[rows : rows + ROWS].double(), dim=-1)
        picked = logp.gather(-1, targets[rows : rows + ROWS].unsqueeze(-1))
        total -= float(picked.sum())
    return total
