"""Perplexity with one block in memory at a time: every evaluation window is recorded at the
embedding, carried through the blocks as they are read (only the current block's inputs are
kept), and scored by the LM head at the end, with the arithmetic of
``depthcut.eval.perplexity``. With a plan the pruned model is measured: removed blocks are
skipped, removed sublayers bypassed, heads / neurons sliced out of each loaded block."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from depthcut.eval.perplexity import (
    PerplexityResult,
    logits_nll,
    protocol_spans,
    result_of,
    window_ids,
)
from depthcut.planning.plan import Plan
from depthcut.stream.edit import PlanEdit
from depthcut.stream.score import StreamCache
from depthcut.stream.source import BlockSource


@dataclass
class Windows:
    """Evaluation windows as calibration-like batches of one window each (no padding)."""

    chunks: list[torch.Tensor]

    def to(self, device) -> Windows:
        return Windows([c.to(device) for c in self.chunks])

    def batches(self) -> list[dict[str, torch.Tensor]]:
        return [
            {"input_ids": c.unsqueeze(0), "attention_mask": torch.ones_like(c).unsqueeze(0)}
            for c in self.chunks
        ]


def stream_perplexity(
    source: BlockSource,
    token_ids: list[int] | torch.Tensor,
    window: int = 512,
    stride: int | None = None,
    bos_id: int | None = None,
    max_windows: int | None = None,
    plan: Plan | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """``depthcut.eval.perplexity`` of the source model (or of ``plan`` applied to it)."""
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    stride, spans = protocol_spans(len(ids), window, stride, max_windows)
    chunks = Windows([window_ids(ids, begin, end, bos_id) for begin, end, _ in spans])
    cache = StreamCache(source, chunks, progress, keep=False)
    edit = PlanEdit(source, plan) if plan is not None else None
    kept = edit.kept() if edit is not None else list(range(source.structure.num_blocks))
    bar = tqdm(total=len(kept), desc="perplexity (stream)", disable=not progress)
    last = 0
    for i in source.walk(kept):
        last = _skip_to(cache, last, i)
        if edit is None:
            cache.advance(i)
        else:
            with edit.running(i):
                cache.advance(i)
        last = i + 1
        bar.update()
    bar.close()
    _skip_to(cache, last, source.structure.num_blocks)
    source.load_head()
    total, count = 0.0, 0
    for b, (_, _, n_targets) in enumerate(spans):
        logits = cache.logits(cache.inputs[-1][b])[0]
        total += logits_nll(logits, chunks.chunks[b].to(logits.device), n_targets)
        count += n_targets
    return result_of(total, count, window, stride, bos_id, len(spans))


def _skip_to(cache: StreamCache, start: int, stop: int) -> int:
    """Removed blocks ``start``..``stop - 1`` pass their inputs on."""
    for j in range(start, stop):
        cache.inputs[j + 1], cache.inputs[j] = cache.inputs[j], []
    return stop
