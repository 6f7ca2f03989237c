"""Block-local metrics: compare a block's output with and without the unit.

For a unit u in block i with cached input x_i and output y_i, y'_i is the block output with u
removed (y'_i = x_i for the whole block). Per real token t:

* ``bi``      (ShortGPT Block Influence): 1 - cos(y_i,t, y'_i,t);
  for a block: 1 - cos(x_i, x_{i+1}).
* ``angular`` (thesis Eq. 3.11): arccos(cos(y_i,t, y'_i,t)) / π.
* ``gromov``  (Gromov et al.): ``angular`` per unit, plus span distances
  d(l, n) = arccos(cos(x_l, x_{l+n})) / π for every contiguous span of n blocks (``spans``).

Averages run over real (non-padding) tokens, or over each row's last real token when
``tokens="last"``. Hidden states come from forward hooks on the blocks, never from
``output_hidden_states`` (whose last entry has the final norm applied).
"""

from __future__ import annotations

import random

import torch

from depthcut.calibrate import BlockCache  # noqa: TC001
from depthcut.importance import functional as F
from depthcut.importance.registry import register_importance
from depthcut.kinds import Kind
from depthcut.units.discover import Unit


class LocalMetric:
    """Base of block-local metrics; subclasses define ``per_token``."""

    scope = "local"

    def __init__(self, tokens: str = "all"):
        self.tokens = tokens

    def per_token(self, y: torch.Tensor, y_removed: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, cache: BlockCache, unit: Unit) -> float:
        total, count = 0.0, 0
        i = unit.block
        for b in range(len(cache.batches)):
            y = cache.inputs[i + 1][b]
            if unit.kind is Kind.BLOCK:
                y_removed = cache.inputs[i][b]
            else:
                with cache.with_bypass([unit]):
                    y_removed = cache.run_block(i, b)
            mask = F.token_mask(cache.masks(b), self.tokens)
            s, n = F.masked_sum(self.per_token(y, y_removed), mask)
            total, count = total + s, count + n
        return total / max(count, 1)


@register_importance("bi")
class BlockInfluence(LocalMetric):
    def per_token(self, y, y_removed):
        return 1.0 - F.cosine(y, y_removed)


@register_importance("angular")
class Angular(LocalMetric):
    def per_token(self, y, y_removed):
        return F.angular(y, y_removed)


@register_importance("gromov")
class Gromov(Angular):
    provides_spans = True

    def spans(self, cache: BlockCache) -> dict[str, float]:
        """d(l, n) for every 0 <= l < l + n <= L, keyed "l:n"."""
        L = cache.num_blocks
        out: dict[str, float] = {}
        for n in range(1, L + 1):
            for start in range(0, L - n + 1):
                total, count = 0.0, 0
                for b in range(len(cache.batches)):
                    mask = F.token_mask(cache.masks(b), self.tokens)
                    d = F.angular(cache.inputs[start][b], cache.inputs[start + n][b])
                    s, c = F.masked_sum(d, mask)
                    total, count = total + s, count + c
                out[f"{start}:{n}"] = total / max(count, 1)
        return out


@register_importance("random")
class RandomBaseline(LocalMetric):
    """The baseline every metric must beat: a fixed pseudo-random number per unit (seeded by
    the unit id, so the same units are chosen on every run); no block is re-run."""

    def score(self, cache: BlockCache, unit: Unit) -> float:
        return random.Random(f"depthcut:{unit.id}").random()
