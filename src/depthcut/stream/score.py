"""Scores of depth units with one block in memory at a time.

The block-input cache is filled block by block: one forward with every block replaced by a
recorder gives block 0's inputs and the extra arguments the model passes to each block
(masks, rotary embeddings, per-layer masks of sliding-window models); then block i is read
from the shards, run on its cached inputs (its outputs are block i + 1's inputs), its units are
scored with the same metric code as in memory, and it is released. Local metrics (``bi``,
``angular``, ``gromov``, ``random``) stream; metrics that need the rest of the model per
candidate (``kl``, ``ce``, ``ppl``) and the iterative strategy are refused with the reason.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from tqdm.auto import tqdm

from depthcut.calibrate import BlockCache, BlockCall
from depthcut.config import PruneConfig
from depthcut.data import CalibData
from depthcut.errors import ConfigError
from depthcut.graph.capture import first_tensor
from depthcut.importance.registry import get_importance
from depthcut.methods.base import describe
from depthcut.scores import Scores
from depthcut.stream.source import BlockSource
from depthcut.surgery.modules import set_module
from depthcut.units.discover import discover_units

STREAMED_METRICS = ("angular", "bi", "gromov", "random")


class _Recorder(nn.Module):
    """Stands in for block ``i`` during the recording forward: keeps its call, passes the
    hidden state on in the shape the real block returns."""

    def __init__(self, cache: StreamCache, i: int, arity: int | None):
        super().__init__()
        self.cache, self.i, self.arity = cache, i, arity

    def forward(self, *args, **kwargs):
        hidden = first_tensor(args, kwargs)
        if self.i == 0:
            self.cache.inputs[0].append(hidden.detach())
        self.cache.calls[self.i].append(BlockCall.from_call(args, kwargs, hidden))
        return hidden if self.arity is None else (hidden, *([None] * (self.arity - 1)))


class StreamCache(BlockCache):
    """A ``BlockCache`` whose blocks are those of a ``BlockSource`` (meta until loaded) and
    whose inputs after block 0 are filled by ``advance``."""

    def __init__(self, source: BlockSource, calib: CalibData, progress: bool = True):
        self.source, self.model, self.structure = source, source.model, source.structure
        self.backward = False
        self._start(calib.to(source.device), progress)
        self._record()

    @property
    def blocks(self) -> nn.ModuleList:  # the live list: a loaded block is the real one
        return self.source.blocks

    def _record(self) -> None:
        """One forward per batch with stand-ins for the blocks and the LM head (which stays
        on ``meta``); then the embeddings are released too."""
        shells = list(self.blocks)
        heads = {p: self.model.get_submodule(p) for p in self.source.head_paths()}
        for i, info in enumerate(self.structure.blocks):
            self.blocks[i] = _Recorder(self, i, info.out_arity)
        for path in heads:
            set_module(self.model, path, nn.Identity())
        try:
            with torch.no_grad():
                for batch in tqdm(self.batches, desc="record", disable=not self.progress):
                    self.model(**batch, use_cache=False)
        finally:
            for i, shell in enumerate(shells):
                self.blocks[i] = shell
            for path, head in heads.items():
                set_module(self.model, path, head)
        self.tail_runs += len(self.batches)
        self.source.release_embeddings()

    def advance(self, i: int) -> None:
        """Block i's outputs (block i + 1's inputs); block i must be loaded."""
        self.inputs[i + 1] = [self.run_block(i, b) for b in range(len(self.batches))]


def check_streamable(cfg: PruneConfig) -> None:
    if cfg.budget.latency is not None:
        raise ConfigError(
            "--budget latency measures decode time on the whole model: not with --streaming"
        )
    if cfg.width_units or "fine" in cfg.units:
        raise ConfigError(
            "--streaming prunes blocks and sublayers; width and fine units "
            "need the whole model in memory"
        )
    if cfg.importance not in STREAMED_METRICS or cfg.strategy == "iterative":
        raise ConfigError(
            f"--streaming scores one-shot with {', '.join(STREAMED_METRICS)}; importance "
            f"{cfg.importance!r} / strategy {cfg.strategy!r} re-run the rest of the model per "
            "candidate: use them in memory"
        )


def stream_score(
    source: BlockSource, cfg: PruneConfig, calib: CalibData, progress: bool = True
) -> Scores:
    """The scores ``depthcut.score`` gives, holding one block in memory at a time."""
    from depthcut.methods.depth.planner import reachable_pool

    check_streamable(cfg)
    model, structure = source.model, source.structure
    scores = Scores(cfg.importance, [], {}, describe(model, structure), cfg.to_dict())
    scores.units = discover_units(model, structure, cfg.depth_units)
    reachable_pool(scores, cfg)  # fail fast, before any block is read
    metric = get_importance(cfg.importance)(tokens=cfg.tokens)
    cache = StreamCache(source, calib, progress)
    by_block = defaultdict(list)
    for unit in scores.units:
        by_block[unit.block].append(unit)
    for i in tqdm(range(structure.num_blocks), desc="stream blocks", disable=not progress):
        with source.loaded(i):
            cache.advance(i)
            for unit in by_block[i]:
                scores.unit_scores[unit.id] = float(metric.score(cache, unit))
    if getattr(metric, "provides_spans", False):
        scores.spans = metric.spans(cache)
    scores.cost["forward_equivalents"] = cache.forward_equivalents
    scores.cost["streamed"] = True
    return scores
