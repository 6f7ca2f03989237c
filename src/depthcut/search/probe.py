"""Measured next-token KL of one removal at a time, run from the block-input cache.

The stream error of ``search.quality`` is cheap but blind to where an error lands: a unit of
error in block 3's attention output does not cost what it costs in block 27's MLP output. During
the rolling walk, once block i's statistics are in, the probe removes block i's attention, its
MLP, or the whole block *with the fold that would repair it* (the T of ``DepthHooks``), runs the
remaining blocks and the LM head on a few calibration batches, and measures KL(dense ‖ that
model) per token. The option table then prices removals by these KLs and narrower sublayers by
their stream error times their sublayer's measured KL per unit of error. The probed batches are
held out of the folds' statistics: each fold is measured on text it was not fitted on, with the
ridge (or no fold) that text prefers, as the repair picks its ridge on held-back batches.

Cost: the dense reference (one forward of the probed batches) and, per block, three runs of the
blocks after it and of the LM head (on every ``STRIDE``-th position) on them: on SmolLM2-135M
with one probed batch of three, about 14 forward-equivalents of the calibration set.
"""

from __future__ import annotations

import torch
from torch import nn

from depthcut.calibrate import RollingCache
from depthcut.graph.structure import ModelStructure
from depthcut.importance import functional as F
from depthcut.search.quality import DepthHooks
from depthcut.units.discover import discover_units

KINDS = ("attention", "mlp", "block")
STRIDE = 4  # KL on every 4th position: the LM head (a large share of a small model) runs on 1/4


class Probe:
    """KL of each removal of a block on the calibration batches ``batches`` of ``cache``."""

    def __init__(self, model: nn.Module, structure: ModelStructure, cache: RollingCache, batches):
        self.cache, self.batches = cache, list(batches)
        units = discover_units(model, structure, ("attention", "mlp"))
        self.units = {u.id: u for u in units}
        self.ref = {b: F.log_probs(self._dense_logits(model, b))[:, ::STRIDE] for b in self.batches}
        self.inputs: dict[int, torch.Tensor] = {}
        self.held: dict[int, dict[int, torch.Tensor]] = {}  # block → its probed inputs

    @torch.no_grad()
    def _dense_logits(self, model: nn.Module, b: int) -> torch.Tensor:
        self.cache.block_runs += self.cache.num_blocks
        self.cache.tail_runs += 1
        return model(**self.cache.batches[b], use_cache=False).logits

    def hold(self, i: int, runs: int = 1) -> None:
        """Keep block i's inputs of the probed batches (call before the walk advances), and
        those of the ``runs`` − 1 blocks before it (the starts of runs still open)."""
        self.inputs = {b: self.cache.inputs[i][b] for b in self.batches}
        self.held = {s: h for s, h in self.held.items() if i - s < runs} | {i: self.inputs}

    @torch.no_grad()
    def measure(self, i: int, depth: DepthHooks, previous: dict | None) -> dict[str, float]:
        """{kind: mean KL per real token (every STRIDE-th)} of removing block i's ``kind``
        alone, folded as ``depth`` would fold it (``previous``: the last block's
        ``DepthHooks.full``)."""
        folds = depth.transforms()
        out = {}
        for kind in KINDS:
            total, count = 0.0, 0
            for b in self.batches:
                hidden = self._without(i, b, kind, folds[kind], depth.full, previous)
                kl = F.token_kl(self.ref[b], self._logits(hidden[:, ::STRIDE]))
                s, n = F.masked_sum(kl, self.cache.masks(b)[:, ::STRIDE].bool())
                total, count = total + s, count + n
            out[kind] = total / max(count, 1)
        return out

    @torch.no_grad()
    def measure_run(self, start: int, end: int, t: torch.Tensor | None, full: dict) -> float:
        """Mean KL per real token (every STRIDE-th) of removing blocks ``start`` … ``end``
        together, their fold ``t`` (None: no fold) in the writer before them, whose whole
        outputs on the probed batches are ``full``."""
        total, count = 0.0, 0
        for b in self.batches:
            hidden = self.held[start][b]
            if t is not None:
                hidden = hidden + _moved(full[b]["mlp.writer"], t)
            hidden = self.cache.run_from(end + 1, b, hidden=hidden)
            kl = F.token_kl(self.ref[b], self._logits(hidden[:, ::STRIDE]))
            s, n = F.masked_sum(kl, self.cache.masks(b)[:, ::STRIDE].bool())
            total, count = total + s, count + n
        return total / max(count, 1)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.cache.logits(hidden)
        self.cache.tail_runs -= 1 - 1 / STRIDE  # the tail ran on 1/STRIDE of the positions
        return logits

    def _without(self, i: int, b: int, kind: str, t, full: dict, previous: dict | None):
        """The last block's output on batch b with block i's ``kind`` removed and folded."""
        cache, hidden = self.cache, self.inputs[b]
        if kind != "mlp" and t is not None and previous is not None:
            hidden = hidden + _moved(previous[b]["mlp.writer"], t)
        if kind == "block":
            return cache.run_from(i + 1, b, hidden=hidden)
        with cache.with_bypass([self.units[f"{kind}:{i}"]]):
            hidden = cache.run_block(i, b, hidden)
        if kind == "mlp" and t is not None:
            hidden = hidden + _moved(full[b]["attention.writer"], t)
        return cache.run_from(i + 1, b, hidden=hidden)


def _moved(written: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What a writer with output ``written`` adds to the stream once T is folded into it:
    written · (T − I)."""
    eye = torch.eye(t.shape[0], dtype=t.dtype, device=t.device)
    return (written.to(t.dtype) @ (t - eye)).to(written.dtype)
