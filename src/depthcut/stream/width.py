"""Head / neuron scores with one block in memory at a time.

The width groups come from the ``meta`` model (shapes and the traced views are all they
need). While block i is loaded for the forward pass, ``magnitude`` reads its weights and
``output_norm`` / ``activation_frequency`` hook its consumers as the block runs on its cached
inputs, and ``ls`` collects its consumers' grams the same way and orders the block's units
while its weights are loaded (one block's grams in memory at a time). ``taylor`` needs the
gradient of the next-token loss: after the forward pass a reverse pass loads the blocks from
the top down, re-runs each from its cached input with gradients enabled (checkpointing at
block boundaries) and back-propagates the gradient that arrived at its output, per
calibration batch, exactly as the in-memory backward does.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from depthcut.config import PruneConfig
from depthcut.methods.width.importance import (
    consumer_hook,
    magnitude,
    taylor_terms,
    token_stat,
)
from depthcut.methods.width.layers import WidthLayer, width_layers
from depthcut.methods.width.repaired import block_ls_scores
from depthcut.stream.reverse import block_backward, count_backward, output_grads
from depthcut.stream.source import BlockSource

STREAMED_WIDTH = ("activation_frequency", "ls", "magnitude", "output_norm", "taylor")


class WidthStream:
    """Collects the width scores of ``cfg`` block by block; ``result()`` is what
    ``methods.width.family.score_width`` returns in memory."""

    def __init__(self, source: BlockSource, cfg: PruneConfig):
        self.source, self.metric, self.tau = source, cfg.width_importance, cfg.tau
        self.layers = {k: width_layers(source.model, source.structure, k) for k in cfg.width_units}
        self.sums = {w.id: torch.zeros(w.size, dtype=torch.float64) for w in self._all()}
        self.tokens = 0

    def _all(self) -> list[WidthLayer]:
        return [w for layers in self.layers.values() for w in layers]

    def _in_block(self, i: int) -> list[WidthLayer]:
        return [w for w in self._all() if w.block == i]

    def forward(self, cache, i: int) -> None:
        """Advance ``cache`` through the loaded block ``i``, collecting what the metric needs
        on the way."""
        modules = dict(self.source.model.named_modules())
        layers = self._in_block(i)
        if self.metric == "magnitude":
            for w in layers:
                self.sums[w.id] += torch.tensor(magnitude(modules, w), dtype=torch.float64)
        if self.metric == "ls":
            self._ls(cache, i, modules, layers)
            return
        if self.metric not in ("output_norm", "activation_frequency"):
            cache.advance(i)
            return
        state: dict = {"mask": None}
        stat = token_stat(self.metric, self.tau)
        hooks = [
            modules[w.parts[-1].path].register_forward_pre_hook(
                consumer_hook(w, stat, self.sums, state)
            )
            for w in layers
        ]
        try:
            cache.advance(i, before=lambda b: state.update(mask=cache.masks(b).bool()))
        finally:
            for hook in hooks:
                hook.remove()

    def _ls(self, cache, i: int, modules: dict, layers: list[WidthLayer]) -> None:
        """Repair-aware scores: the consumers' grams while block ``i`` runs, then each layer's
        greedy order from the loaded weights."""
        for lid, values in block_ls_scores(cache, i, modules, layers).items():
            self.sums[lid] = torch.tensor(values, dtype=torch.float64)

    def backward(self, cache, progress: bool = True) -> None:
        """Taylor: the reverse pass, top block first (the LM head must be loaded)."""
        if self.metric != "taylor":
            return
        grads = output_grads(cache, self._loss)
        order = reversed(range(cache.num_blocks))
        bar = tqdm(total=cache.num_blocks, desc="taylor (reverse)", disable=not progress)
        for i in self.source.walk(order):
            grads = self._block_backward(cache, i, grads)
            bar.update()
        bar.close()
        count_backward(cache)

    def _loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """The loss as the model computes it, padding labelled -100."""
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return self.source.model.loss_function(
            logits, labels, vocab_size=self.source.config.vocab_size
        )

    def _block_backward(self, cache, i: int, grads: list) -> list:
        """Back-propagate each batch's output gradient through block ``i``; add the Taylor
        terms of its layers per batch; return the gradients at its input."""
        block = cache.blocks[i]
        modules = dict(self.source.model.named_modules())
        layers = self._in_block(i)

        def add_terms(b: int) -> None:
            for w in layers:
                self.sums[w.id] += taylor_terms(modules, w)
            block.zero_grad(set_to_none=True)

        block.zero_grad(set_to_none=True)
        return block_backward(cache, i, grads, add_terms)

    def count_tokens(self, cache) -> None:
        self.tokens = sum(int(cache.masks(b).sum()) for b in range(len(cache.batches)))

    def result(self) -> dict:
        divide = self.metric in ("output_norm", "activation_frequency")
        out = {}
        for kind, layers in self.layers.items():
            info = {
                w.id: {
                    "block": w.block,
                    "size": w.size,
                    "unit_params": w.unit_params,
                    "path": w.module,
                }
                for w in layers
            }
            values = {
                w.id: (self.sums[w.id] / self.tokens if divide else self.sums[w.id]).tolist()
                for w in layers
            }
            out[kind] = {"layers": info, "scores": values, "metric": self.metric}
        return out
