"""Final-logit metrics: run from the unit's block to the LM head with the unit removed.

* ``kl``:  mean over real tokens of KL(p_current || p_removed) of the next-token distribution.
* ``ce``:  increase of the mean next-token cross-entropy (nats) on the calibration text.
* ``ppl``: increase of perplexity exp(CE) on the calibration text.

"current" is the model with the units removed so far (iterative scoring) — the dense model in
one-shot scoring. Only blocks from the unit's block onward run (block-input cache).
"""

from __future__ import annotations

import math

import torch

from depthcut.calibrate import BlockCache
from depthcut.importance import functional as F
from depthcut.importance.registry import register_importance
from depthcut.units.discover import Unit


class LogitMetric:
    scope = "logits"

    def __init__(self, tokens: str = "all"):
        self.tokens = tokens
        self._ref_key: tuple | None = None
        self._ref: list[torch.Tensor] = []
        self._ref_logp: list[torch.Tensor] | None = None

    def reference(self, cache: BlockCache) -> list[torch.Tensor]:
        """Logits of the current model per batch, recomputed after each committed removal."""
        key = (id(cache), tuple(u.id for u in cache.removed))
        if key != self._ref_key:
            self._ref = [cache.logits(h) for h in cache.inputs[-1]]
            self._ref_key = key
            self._ref_logp = None
        return self._ref

    def reference_logp(self, cache: BlockCache) -> list[torch.Tensor]:
        ref = self.reference(cache)
        if self._ref_logp is None:
            self._ref_logp = [F.log_probs(r) for r in ref]
        return self._ref_logp

    def pruned_logits(self, cache: BlockCache, unit: Unit, b: int) -> torch.Tensor:
        return cache.logits(cache.run_from(unit.block, b, [unit]))


class _NLLMetric(LogitMetric):
    def nll(self, cache: BlockCache, logits_of) -> float:
        pairs = ((logits_of(b), batch) for b, batch in enumerate(cache.batches))
        return F.mean_nll(pairs, self.tokens)

    def both(self, cache: BlockCache, unit: Unit) -> tuple[float, float]:
        ref = self.reference(cache)
        if getattr(self, "_base_key", None) != self._ref_key:
            self._base = self.nll(cache, lambda b: ref[b])
            self._base_key = self._ref_key
        return self._base, self.nll(cache, lambda b: self.pruned_logits(cache, unit, b))


@register_importance("kl")
class KL(LogitMetric):
    def score(self, cache: BlockCache, unit: Unit) -> float:
        ref = self.reference_logp(cache)
        total, count = 0.0, 0
        for b in range(len(cache.batches)):
            kl = F.token_kl(ref[b], self.pruned_logits(cache, unit, b))
            s, n = F.masked_sum(kl, F.token_mask(cache.masks(b), self.tokens))
            total, count = total + s, count + n
        return total / max(count, 1)


@register_importance("ce")
class CrossEntropy(_NLLMetric):
    def score(self, cache: BlockCache, unit: Unit) -> float:
        base, pruned = self.both(cache, unit)
        return pruned - base


@register_importance("ppl")
class Perplexity(_NLLMetric):
    def score(self, cache: BlockCache, unit: Unit) -> float:
        base, pruned = self.both(cache, unit)
        return math.exp(min(pruned, 700.0)) - math.exp(min(base, 700.0))
