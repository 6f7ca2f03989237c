"""Naive reference implementations: full-model forwards, no block-input cache.

They define what the cached metrics must equal and are the baseline of the prefix-caching
benchmark. ``forwards`` counts full forward passes over the calibration set.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from depthcut.data import CalibData
from depthcut.graph.capture import first_tensor, output_tensor
from depthcut.graph.structure import ModelStructure
from depthcut.importance import functional as F
from depthcut.kinds import Kind
from depthcut.planning.select import Selection
from depthcut.units.bypass import bypassed
from depthcut.units.discover import Unit


class NaiveScorer:
    def __init__(self, model: nn.Module, structure: ModelStructure, calib: CalibData, tokens="all"):
        self.model, self.structure, self.tokens = model, structure, tokens
        self.batches = calib.batches()
        self.forwards = 0
        self._memo: dict[tuple, list] = {}  # reference runs of the current removed set

    def _ref(self, removed: list[Unit], block: int | None = None):
        key = (tuple(u.id for u in removed), block)
        if key not in self._memo:
            self._memo[key] = self._run(removed, block)
        return self._memo[key]

    def _run(self, units: list[Unit], block: int | None = None):
        """Per batch: (logits, block input, block output) with ``units`` bypassed."""
        out = []
        module = (
            None if block is None else self.model.get_submodule(self.structure.blocks[block].path)
        )
        for batch in self.batches:
            seen: dict[str, torch.Tensor] = {}

            def hook(mod, args, kwargs, output, seen=seen):
                seen["x"], seen["y"] = first_tensor(args, kwargs), output_tensor(output)

            handle = module.register_forward_hook(hook, with_kwargs=True) if module else None
            try:
                with torch.no_grad(), bypassed(self.model, self.structure, units):
                    logits = self.model(**batch, use_cache=False).logits
            finally:
                if handle:
                    handle.remove()
            out.append((logits, seen.get("x"), seen.get("y")))
        self.forwards += 1
        return out

    def score(self, metric: str, unit: Unit, removed: list[Unit]) -> float:
        if metric in ("bi", "angular", "gromov"):
            return self._local(metric, unit, removed)
        return self._logits(metric, unit, removed)

    def _local(self, metric: str, unit: Unit, removed: list[Unit]) -> float:
        ref = self._ref(removed, unit.block)
        cut = ref if unit.kind is Kind.BLOCK else self._run([*removed, unit], unit.block)
        total, count = 0.0, 0
        for b, batch in enumerate(self.batches):
            y = ref[b][2]
            y_removed = ref[b][1] if unit.kind is Kind.BLOCK else cut[b][2]
            values = 1 - F.cosine(y, y_removed) if metric == "bi" else F.angular(y, y_removed)
            s, n = F.masked_sum(values, F.token_mask(batch["attention_mask"], self.tokens))
            total, count = total + s, count + n
        return total / count

    def _logits(self, metric: str, unit: Unit, removed: list[Unit]) -> float:
        ref, cut = self._ref(removed), self._run([*removed, unit])
        if metric == "kl":
            total, count = 0.0, 0
            for b, batch in enumerate(self.batches):
                kl = F.token_kl(F.log_probs(ref[b][0]), cut[b][0])
                s, n = F.masked_sum(kl, F.token_mask(batch["attention_mask"], self.tokens))
                total, count = total + s, count + n
            return total / count
        base, pruned = self._nll(ref), self._nll(cut)
        if metric == "ce":
            return pruned - base
        return math.exp(pruned) - math.exp(base)

    def _nll(self, runs) -> float:
        total, count = 0.0, 0
        for (logits, _, _), batch in zip(runs, self.batches):
            _, mask = F.shifted_targets(batch["input_ids"], batch["attention_mask"])
            s, n = F.masked_sum(F.token_nll(logits, batch["input_ids"]), mask)
            total, count = total + s, count + n
        return total / count

    def greedy(self, metric: str, pool: list[Unit], target: int) -> list[str]:
        """Greedy removal order with a full-model re-run per candidate."""
        selection, removed, order = Selection(pool), list[Unit](), list[str]()
        while selection.removed_params < target:
            live = [u for u in pool if selection.marginal(u) > 0]
            scores = {u.id: self.score(metric, u, removed) for u in live}
            best = min(live, key=lambda u: (scores[u.id], u.sort_key()))
            selection.add(best)
            removed.append(best)
            order.append(best.id)
        return order
