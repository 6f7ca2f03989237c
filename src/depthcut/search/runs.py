"""Runs of consecutive removed blocks, folded as one: the option ReplaceMe's span is.

``--repair ls`` folds every maximal run of removed blocks into one map at the writer before
it, so removing blocks i … i+s−1 together is not the sum of removing each alone: one fold
repairs the whole run (ReplaceMe's 4-block span at a 10% latency budget on SmolLM2-135M is
16.3 where the same blocks priced one by one look worse). During the option table's rolling
walk, ``RunHooks`` collects each run's fold statistics in one pass:

* a run starting at block i folds into block i−1's MLP writer, with output M (the statistics
  the single block's fold uses, ``search.quality.DepthHooks``) and target
  Z = M + (stream after block i+s−1 − stream before block i), so
  A = Mᵀ D M (once per start) and B = Mᵀ D Z = A + Σ_{k=i}^{i+s−1} Mᵀ D Δ_k (Δ_k: block k's
  output minus its input) add up block by block with nothing but M kept per start;
* the probed batches are checked on, as every fold's ridge is chosen (``DepthHooks``), and
  ``search.probe.Probe.measure_run`` measures the folded run's next-token KL.

Memory: M of the last ``longest`` starts (the writer outputs ``DepthHooks`` keeps for one).
A run needs a writer before it (not at block 0) and a probe to price it.
"""

from __future__ import annotations

import torch
from torch import nn

from depthcut.graph.capture import first_tensor, output_tensor
from depthcut.graph.structure import ModelStructure
from depthcut.refit.ls import DEPTH_RIDGES
from depthcut.search.quality import FoldSums

LONGEST = 4  # blocks in the longest run option


class RunStart:
    """The statistics of the runs starting at one block: per batch its token weights, the fit
    batches' A and running B, the probed batches' running Δ and check sums per length."""

    def __init__(self, block: int, written: list[torch.Tensor], full: dict) -> None:
        self.block, self.written, self.full = block, written, full
        self.weights: dict[int, torch.Tensor] = {}
        self.a: torch.Tensor | None = None
        self.b: torch.Tensor | None = None
        self.moved: dict[int, torch.Tensor] = {}  # probed batches: Σ Δ so far
        self.checks: dict[int, FoldSums] = {}  # run length → probed batches' sums
        self.fits: dict[int, torch.Tensor] = {}  # run length → B

    def step(self, batch: int, length: int, x: torch.Tensor, delta: torch.Tensor, probed: bool):
        m = self.written[batch]
        if length == 1:
            self.weights[batch] = 1.0 / x.pow(2).mean(-1).clamp_min(1e-12)
        d = self.weights[batch]
        if probed:
            self.moved[batch] = self.moved.get(batch, 0) + delta
            if length > 1:
                self.checks.setdefault(length, FoldSums()).add(m, m + self.moved[batch], d)
            return
        md = m * d[:, None]
        if length == 1:
            a = md.T @ m
            self.a = a if self.a is None else self.a + a
            self.b = a.clone() if self.b is None else self.b + a
        assert self.b is not None
        self.b += md.T @ delta

    def transform(self, length: int) -> tuple[torch.Tensor | None, float] | None:
        """(T of the run's fold — None: no fold is better —, its stream error per probed token)
        under the ridge whose error on the probed batches is least; None without statistics."""
        check = self.checks.get(length)
        if self.a is None or check is None or check.a is None:
            return None
        fit = FoldSums()
        fit.a, fit.b = self.a, self.fits[length]
        eye = torch.eye(self.a.shape[0], dtype=self.a.dtype, device=self.a.device)
        candidates = [None, *(fit.transform(r) for r in DEPTH_RIDGES)]
        errors = [check.error_of(eye if t is None else t) for t in candidates]
        best = min(range(len(candidates)), key=errors.__getitem__)
        return candidates[best], errors[best] / max(check.n, 1)


class RunHooks:
    """The fold statistics of every run of 2 … ``longest`` blocks, collected during the walk
    (``begin(i, …)`` before block i's step, ``end(i)`` after it)."""

    def __init__(self, model: nn.Module, structure: ModelStructure, longest: int, probed) -> None:
        self.modules, self.structure = dict(model.named_modules()), structure
        self.longest, self.probed = longest, set(probed)
        self.open: dict[int, RunStart] = {}
        self.state: dict = {}
        self.handle = None

    def begin(self, i: int, written: list | None, full: dict | None) -> None:
        """Open the runs starting at block i (when block i−1 has a writer whose outputs are
        ``written``, with the probed batches' whole outputs ``full``) and hook block i."""
        self.open = {s: o for s, o in self.open.items() if i - s < self.longest}
        if written is not None and full is not None:
            self.open[i] = RunStart(i, written, full)
        module = self.modules[self.structure.blocks[i].path]
        self.handle = module.register_forward_hook(self._block(i), with_kwargs=True)

    def _block(self, i: int):
        def hook(module, args, kwargs, output):
            mask, batch = self.state["mask"], self.state["batch"]
            x = first_tensor(args, kwargs)[mask].double()
            delta = output_tensor(output)[mask].double() - x
            for start in self.open.values():
                probed = batch in self.probed
                start.step(batch, i - start.block + 1, x, delta, probed)

        return hook

    def end(self, i: int) -> list[tuple[RunStart, int]]:
        """Unhook block i; the runs that end at it: (their start, their length ≥ 2)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        done = []
        for start in self.open.values():
            length = i - start.block + 1
            if length > 1 and start.b is not None:
                start.fits[length] = start.b.clone()
                done.append((start, length))
        return done

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
