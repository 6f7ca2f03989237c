"""Block-input caching: score a unit by re-running only from its block onward.

One full forward per calibration batch records every block's input hidden state and the
extra arguments the model passed to it (masks, rotary embeddings). Afterwards any suffix of
the block stack can be replayed from the cache, with units bypassed, and the model's tail
(final norm, LM head) applied. ``block_runs`` counts block executions so that costs can be
reported in full-forward equivalents.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from depthcut.data import CalibData
from depthcut.errors import UnsupportedModelError
from depthcut.graph.capture import first_tensor, hidden_of
from depthcut.graph.structure import ModelStructure
from depthcut.kinds import Kind
from depthcut.surgery.modules import set_module
from depthcut.surgery.release import page_out
from depthcut.units.bypass import bypassed
from depthcut.units.discover import Unit, unique_params


@dataclass
class BlockCall:
    args: tuple
    kwargs: dict[str, Any]
    hidden_pos: int | None  # index in args of the hidden state, None when passed by keyword
    hidden_key: str | None

    @classmethod
    def from_call(cls, args: tuple, kwargs: dict, hidden: torch.Tensor) -> BlockCall:
        for pos, value in enumerate(args):
            if value is hidden:
                return cls(tuple(args), dict(kwargs), pos, None)
        key = next(k for k, v in kwargs.items() if v is hidden)
        return cls(tuple(args), dict(kwargs), None, key)

    def run(self, block: nn.Module, hidden: torch.Tensor) -> Any:
        args, kwargs = list(self.args), dict(self.kwargs)
        if self.hidden_pos is not None:
            args[self.hidden_pos] = hidden
        elif self.hidden_key is not None:
            kwargs[self.hidden_key] = hidden
        return block(*args, **kwargs)


class BlockCache:
    """Cached block inputs of every calibration batch, kept consistent with removed units."""

    def __init__(
        self,
        model: nn.Module,
        structure: ModelStructure,
        calib: CalibData,
        progress: bool = True,
        backward: bool = False,
    ):
        self.model = model
        self.backward = backward  # also accumulate LM-loss gradients (Taylor) in the pass
        self.structure = structure
        modules = dict(model.named_modules())
        self._blocks: list[nn.Module] | nn.ModuleList = [modules[b.path] for b in structure.blocks]
        self._start(calib, progress)
        self._capture()

    def _start(self, calib: CalibData, progress: bool) -> None:
        """The tail, the costs, the batches and empty caches (model, structure and blocks set)."""
        modules = dict(self.model.named_modules())
        self.tail = [modules[p] for p in self.structure.require_tail()]
        self.block_cost = unique_params(list(self.blocks)) / len(self.blocks)
        self.tail_cost = unique_params(self.tail)
        self.batches = calib.batches()
        self.removed: list[Unit] = []
        self.block_runs = 0.0
        self.tail_runs = 0.0
        self.scale: dict[int, float] = {}  # cost of a swapped-in (pruned) block, as a fraction
        self.progress = progress
        # inputs[i][b]: input of block i for batch b; inputs[L][b]: output of the last block
        self.inputs: list[list[torch.Tensor]] = [[] for _ in range(len(self.blocks) + 1)]
        self.calls: list[list[BlockCall]] = [[] for _ in self.blocks]

    @property
    def blocks(self) -> list[nn.Module] | nn.ModuleList:
        """The model's blocks, in order (entries are swapped while units are bypassed)."""
        return self._blocks

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def forward_equivalents(self) -> float:
        """Work done so far in full forwards of the whole calibration set.

        A block run costs its share of parameters (≈ MACs per token); the tail (final norm and
        LM head) its own share.
        """
        work = self.block_runs * self.block_cost + self.tail_runs * self.tail_cost
        full = (self.num_blocks * self.block_cost + self.tail_cost) * len(self.batches)
        return work / full

    def masks(self, b: int) -> torch.Tensor:
        return self.batches[b]["attention_mask"]

    def _capture(self) -> None:
        handles = []

        def pre(index: int):
            def hook(module, args, kwargs):
                hidden = first_tensor(args, kwargs)
                self.inputs[index].append(hidden.detach())
                self.calls[index].append(BlockCall.from_call(args, kwargs, hidden))

            return hook

        def post(module, args, kwargs, output):
            self.inputs[-1].append(hidden_of(output).detach())

        try:
            for i, block in enumerate(self.blocks):
                handles.append(block.register_forward_pre_hook(pre(i), with_kwargs=True))
            handles.append(self.blocks[-1].register_forward_hook(post, with_kwargs=True))
            for batch in tqdm(self.batches, desc="calibrate", disable=not self.progress):
                self._forward(batch)
        finally:
            for handle in handles:
                handle.remove()
        passes = 3 if self.backward else 1  # a backward pass costs about two forwards
        self.block_runs += passes * self.num_blocks * len(self.batches)
        self.tail_runs += passes * len(self.batches)

    def _forward(self, batch: dict) -> None:
        if not self.backward:
            with torch.no_grad():
                self.model(**batch, use_cache=False)
            return
        from depthcut.losses import lm_loss

        with torch.enable_grad():
            logits = getattr(self.model(**batch, use_cache=False), "logits", None)
            if logits is None:
                raise UnsupportedModelError(
                    f"{type(self.model).__name__} has no language-model head: gradient scores "
                    "(fine units' channel Taylor) need next-token logits"
                )
            lm_loss(logits, batch["input_ids"], batch["attention_mask"]).backward()

    @contextmanager
    def swapped(self, i: int, block: nn.Module, scale: float = 1.0) -> Iterator[None]:
        """Within the context, block ``i`` runs as ``block`` (costing ``scale`` of a block);
        the model itself is not changed."""
        original = self.blocks[i]
        self.blocks[i], self.scale[i] = block, scale
        try:
            yield
        finally:
            self.blocks[i] = original
            self.scale.pop(i, None)

    def run_block(self, i: int, b: int, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Output hidden state of block ``i`` on batch ``b`` (cached input unless given)."""
        hidden = self.inputs[i][b] if hidden is None else hidden
        self.block_runs += self.scale.get(i, 1.0)
        with torch.no_grad():
            return hidden_of(self.calls[i][b].run(self.blocks[i], hidden))

    def run_from(
        self, i: int, b: int, units: Iterable[Unit] = (), hidden: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final hidden state after blocks i..L-1, with ``units`` (and removed ones) bypassed.

        Bypassed whole blocks are skipped, not run.
        """
        units = list(units)
        hidden = self.inputs[i][b] if hidden is None else hidden
        skip = self._skipped_blocks(units)
        with self._bypass(units):
            for j in range(i, self.num_blocks):
                if j not in skip:
                    hidden = self.run_block(j, b, hidden)
        return hidden

    def _skipped_blocks(self, units: list[Unit]) -> set[int]:
        return {u.block for u in [*self.removed, *units] if u.kind is Kind.BLOCK}

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Apply the model tail (final norm, LM head) to a last-block output."""
        self.tail_runs += 1
        with torch.no_grad():
            for module in self.tail:
                hidden = hidden_of(module(hidden))
        return hidden

    def row_logits(self, hidden: torch.Tensor) -> Iterator[torch.Tensor]:
        """``logits`` of ``hidden``'s sequences one at a time, counted as one tail run: a
        batch's at once are 4 × 256 tokens × a 152k vocabulary, 0.6 GB of float32, and as
        much again for their log-probabilities."""
        rows = hidden.shape[0]
        for r in range(rows):
            logits = self.logits(hidden[r : r + 1])
            self.tail_runs -= 1 - 1 / rows
            yield logits

    def _bypass(self, units: Iterable[Unit]):
        units = [*self.removed, *units]
        return bypassed(self.model, self.structure, units) if units else nullcontext()

    def remove(self, unit: Unit) -> None:
        """Commit ``unit`` as removed and refresh the cached inputs after its block."""
        self.removed.append(unit)
        self.refresh_from(unit.block)

    def refresh_from(self, i: int, stop: int | None = None) -> None:
        """Recompute the cached inputs after block ``i`` (removed units bypassed), e.g. after
        its weights changed; up to block ``stop``'s input (default: the last block's output)."""
        skip = self._skipped_blocks([])
        stop = self.num_blocks if stop is None else stop
        with self._bypass(()):
            for b in range(len(self.batches)):
                hidden = self.inputs[i][b]
                for j in range(i, stop):
                    if j not in skip:
                        hidden = self.run_block(j, b, hidden)
                    self.inputs[j + 1][b] = hidden

    def with_bypass(self, units: Iterable[Unit]) -> Any:
        """Context manager: the model with the removed units and ``units`` bypassed."""
        return self._bypass(units)


def linear_tail(model: nn.Module, structure: ModelStructure) -> list[str]:
    """The Linear layers of the model's tail (its LM head): what a pass that only needs the
    blocks' inputs can skip (a tied head shares the embedding's weight anyway)."""
    return [p for p in structure.tail or [] if isinstance(model.get_submodule(p), nn.Linear)]


class _Recorder(nn.Module):
    """Stands in for block ``i`` during the recording forward: keeps its call, passes the
    hidden state on in the shape the real block returns."""

    def __init__(self, cache: RollingCache, i: int, arity: int | None):
        super().__init__()
        self.cache, self.i, self.arity = cache, i, arity

    def forward(self, *args, **kwargs):
        hidden = first_tensor(args, kwargs)
        if self.i == 0:
            self.cache.inputs[0].append(hidden.detach())
        self.cache.calls[self.i].append(BlockCall.from_call(args, kwargs, hidden))
        return hidden if self.arity is None else (hidden, *([None] * (self.arity - 1)))


class RollingCache(BlockCache):
    """A ``BlockCache`` filled one block at a time: a recording forward (blocks and LM head
    replaced by stand-ins) gives block 0's inputs and every block's call, then ``advance(i)``
    runs block i on its cached inputs. Without ``keep`` only the current block's inputs are
    held, so a walk over the blocks costs one forward and the activations of one layer, and
    a caller can hold one block's statistics at a time; and the weights of a memory-mapped
    checkpoint are paged out once passed (``surgery.release.page_out``), so the walk holds
    about one block's weights resident (the 1.5B's 7.1 GB checkpoint otherwise stays resident
    beside the statistics; the next whole forward reads them back: ≈ 0.8 GB/s here)."""

    def __init__(
        self,
        model: nn.Module,
        structure: ModelStructure,
        calib: CalibData,
        progress: bool = True,
        keep: bool = False,
    ):
        self.model, self.structure = model, structure
        self.backward, self.keep = False, keep
        # the live list: recorded
        self._blocks = structure.block_list(model)
        self._start(calib, progress)
        self._record()
        if not keep:
            page_out(self.model.parameters())

    def _record(self) -> None:
        """One forward per batch with stand-ins for the blocks and the LM head."""
        shells = list(self.blocks)
        heads = linear_tail(self.model, self.structure)
        originals = {p: self.model.get_submodule(p) for p in heads}
        for i, info in enumerate(self.structure.blocks):
            self.blocks[i] = _Recorder(self, i, info.out_arity)
        for path in originals:
            set_module(self.model, path, nn.Identity())
        try:
            with torch.no_grad():
                for batch in tqdm(self.batches, desc="record", disable=not self.progress):
                    self.model(**batch, use_cache=False)
        finally:
            for i, shell in enumerate(shells):
                self.blocks[i] = shell
            for path, head in originals.items():
                set_module(self.model, path, head)
        self.tail_runs += len(self.batches)

    def advance(self, i: int, before=None) -> None:
        """Block i's outputs (block i + 1's inputs); ``before(b)`` is called before batch b
        runs; without ``keep`` block i's inputs are dropped after."""
        outputs = []
        for b in range(len(self.batches)):
            if before is not None:
                before(b)
            outputs.append(self.run_block(i, b))
        self.inputs[i + 1] = outputs
        if not self.keep:
            self.inputs[i] = []
            page_out(self.blocks[i].parameters())
