"""The reverse pass of streaming: gradients of a next-token loss carried from the LM head down
through the blocks, each block re-run from its cached input with gradients enabled
(activation checkpointing at block boundaries), one calibration batch at a time."""

from __future__ import annotations

from collections.abc import Callable

import torch

from depthcut.graph.capture import hidden_of, output_tensor


def output_grads(cache, loss: Callable) -> list[torch.Tensor]:
    """Per batch: d loss / d (last block's output); ``loss(logits, batch)`` is a scalar.
    The LM head must be loaded."""
    grads = []
    for b, batch in enumerate(cache.batches):
        hidden = cache.inputs[-1][b].detach().requires_grad_(True)
        out = hidden
        with torch.enable_grad():
            for module in cache.tail:
                out = output_tensor(module(out))
            loss(out, batch).backward()
        grads.append(hidden.grad)
    return grads


def block_backward(cache, i: int, grads: list, after: Callable | None = None) -> list:
    """Back-propagate each batch's output gradient through the loaded block ``i`` (parameter
    gradients accumulate unless ``after(b)``, called after batch b, clears them); returns the
    gradients at its input."""
    block, out = cache.blocks[i], []
    for b, grad in enumerate(grads):
        x = cache.inputs[i][b].detach().requires_grad_(i > 0)
        with torch.enable_grad():
            y = hidden_of(cache.calls[i][b].run(block, x))
            y.backward(grad)
        if after is not None:
            after(b)
        out.append(x.grad)
    return out


def count_backward(cache) -> None:
    """A backward of every block and of the tail costs about two forwards."""
    cache.block_runs += 2 * cache.num_blocks * len(cache.batches)
    cache.tail_runs += 2 * len(cache.batches)
