"""Scores with one block in memory at a time.

The block-input cache is filled block by block: one forward with every block replaced by a
recorder gives block 0's inputs and the extra arguments the model passes to each block
(masks, rotary embeddings, per-layer masks of sliding-window models); then block i is read
from the shards (the next one is read meanwhile), run on its cached inputs (its outputs are
block i + 1's inputs), its units are scored with the same metric code as in memory, and it is
released. Local metrics (``bi``, ``angular``, ``gromov``, ``random``) score a block while it
is loaded. Logit metrics (``kl``, ``ce``, ``ppl``) need the rest of the model per candidate:
every candidate's hidden state is carried along the same single pass (a candidate starting at
block i runs block i without its unit, then every later block as it is loaded), so the weights
are read once and the compute is the in-memory one; the held states cost candidates × the
calibration activations. Head / neuron scores (``stream.width``) and fine-grained units
(``stream.fine``) stream too, their gradients by a reverse pass. The iterative strategies are
refused with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from depthcut.calibrate import RollingCache
from depthcut.config import PruneConfig
from depthcut.data import CalibData
from depthcut.errors import ConfigError
from depthcut.importance.registry import get_importance
from depthcut.importance.run import score_units
from depthcut.kinds import Kind
from depthcut.methods.base import describe
from depthcut.scores import Scores
from depthcut.stream.resume import Checkpoint
from depthcut.stream.source import BlockSource
from depthcut.stream.width import STREAMED_WIDTH, WidthStream
from depthcut.units.bypass import bypassed
from depthcut.units.discover import discover_units

LOCAL_METRICS = ("angular", "bi", "gromov", "random")
LOGIT_METRICS = ("ce", "kl", "ppl")
STREAMED_METRICS = LOCAL_METRICS + LOGIT_METRICS


class StreamCache(RollingCache):
    """A ``RollingCache`` whose blocks are those of a ``BlockSource`` (meta until loaded):
    the embeddings are loaded for the recording forward and released after it."""

    def __init__(
        self,
        source: BlockSource,
        calib: CalibData | Any,  # or another batch source (stream.perplexity.Windows)
        progress: bool = True,
        keep: bool = True,
    ):
        self.source, self.model, self.structure = source, source.model, source.structure
        self.backward, self.keep = False, keep
        self.finals: dict[str, list[torch.Tensor]] = {}  # candidate id → final hidden states
        self._start(calib.to(source.device), progress)
        source.load_rest()
        self._record()  # the LM head stays on ``meta``
        source.release_embeddings()

    @property
    def blocks(self) -> nn.ModuleList:  # the live list: a loaded block is the real one
        return self.source.blocks

    def run_from(self, i: int, b: int, units=(), hidden=None) -> torch.Tensor:
        """The final hidden state a logit metric asks for: carried along the pass."""
        units = list(units)
        if hidden is None and len(units) == 1 and units[0].id in self.finals:
            return self.finals[units[0].id][b]
        raise ConfigError("--streaming runs the blocks once, in order: no re-runs")


def check_streamable(cfg: PruneConfig) -> None:
    from depthcut.stream.fine import check_fine_streamable

    if cfg.budget.latency is not None:
        raise ConfigError(
            "--budget latency measures decode time on the whole model: not with --streaming"
        )
    if cfg.strategy == "iterative" or cfg.width_steps > 1:
        raise ConfigError(
            "--streaming scores one-shot: the iterative strategy re-scores the model after "
            "every removal; use it in memory"
        )
    if cfg.fine:
        check_fine_streamable(cfg)
    elif cfg.depth_units and cfg.importance not in STREAMED_METRICS:
        raise ConfigError(
            f"--streaming scores depth units with {', '.join(STREAMED_METRICS)}, "
            f"not {cfg.importance!r}"
        )
    if cfg.width_units and cfg.width_importance not in STREAMED_WIDTH:
        raise ConfigError(
            f"--streaming scores heads / neurons with {', '.join(STREAMED_WIDTH)}, "
            f"not {cfg.width_importance!r}"
        )


def check_resumable(cfg: PruneConfig) -> None:
    """Refuse, before any work, a resume the walk cannot give: scores made at the end from
    every block's inputs or carried states (logit metrics, spans, Taylor, fine units)."""
    if cfg.fine or (cfg.depth_units and cfg.importance in LOGIT_METRICS + ("gromov",)):
        raise ConfigError(
            "--resume continues streamed scores of local depth metrics (bi, angular, random) "
            "and of heads / neurons; the chosen metric needs the whole walk at once"
        )
    if cfg.width_units and cfg.width_importance == "taylor":
        raise ConfigError("--resume: taylor scores need a reverse pass; choose another metric")


class _Candidates:
    """The final hidden states of every depth candidate, carried along one pass."""

    def __init__(self, cache: StreamCache, units: list):
        self.cache, self.units = cache, units
        self.states: dict[str, list[torch.Tensor]] = {}

    def advance(self, i: int) -> None:
        """Block ``i`` (loaded) runs on every live candidate, then the candidates of block i
        start: a removed block is skipped, a removed sublayer bypassed while the block runs."""
        cache = self.cache
        for uid, hidden in self.states.items():
            self.states[uid] = [cache.run_block(i, b, h) for b, h in enumerate(hidden)]
        for unit in (u for u in self.units if u.block == i):
            if unit.kind is Kind.BLOCK:
                self.states[unit.id] = list(cache.inputs[i])
                continue
            with bypassed(cache.model, cache.structure, [unit]):
                self.states[unit.id] = [cache.run_block(i, b) for b in range(len(cache.batches))]


def forward_pass(source: BlockSource, progress: bool = True, start: int = 0):
    """Every block from ``start`` on, in order, each loaded while the caller works on it
    (``BlockSource.walk``), with a progress bar."""
    n = source.structure.num_blocks
    walk = source.walk(range(start, n))
    return tqdm(walk, total=n, initial=start, desc="stream blocks", disable=not progress)


def stream_score(
    source: BlockSource,
    cfg: PruneConfig,
    calib: CalibData,
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
) -> Scores:
    """The scores ``depthcut.score`` gives, holding one block in memory at a time. With a
    ``checkpoint`` the walk's state is saved after every block, and a saved state of the same
    run is continued from (``stream.resume``)."""
    from depthcut.methods.depth.planner import reachable_pool

    check_streamable(cfg)
    model, structure = source.model, source.structure
    scores = Scores(cfg.metric, [], {}, describe(model, structure), cfg.to_dict())
    if cfg.fine:
        return _stream_fine(source, cfg, calib, scores, progress)
    scores.units = discover_units(model, structure, cfg.depth_units)
    if cfg.depth_units:
        reachable_pool(scores, cfg)  # fail fast, before any block is read
    metric = get_importance(cfg.metric)(tokens=cfg.tokens) if cfg.depth_units else None
    width = WidthStream(source, cfg) if cfg.width_units else None
    logits = cfg.importance in LOGIT_METRICS and bool(scores.units)
    cache = StreamCache(source, calib, progress)
    carried = _Candidates(cache, scores.units) if logits else None
    by_block = defaultdict(list)
    for unit in scores.units:
        by_block[unit.block].append(unit)
    start = _restore(checkpoint, cache, scores, width)
    for i in forward_pass(source, progress, start):
        width.forward(cache, i) if width is not None else cache.advance(i)
        if carried is not None:
            carried.advance(i)
        elif metric is not None:
            for unit in by_block[i]:
                scores.unit_scores[unit.id] = float(metric.score(cache, unit))
        if checkpoint is not None:
            _save(checkpoint, i, cache, scores, width)
    if carried is not None or (width is not None and width.metric == "taylor"):
        source.load_head()
    if carried is not None:
        cache.finals = carried.states
        scores.unit_scores = score_units(cache, metric, scores.units, progress)
    if width is not None:
        width.count_tokens(cache)
        width.backward(cache, progress)
        scores.width = width.result()
    if metric is not None and getattr(metric, "provides_spans", False):
        scores.spans = metric.spans(cache)
    scores.cost["forward_equivalents"] = cache.forward_equivalents
    scores.cost["streamed"] = True
    return scores


def _save(checkpoint: Checkpoint, i: int, cache, scores: Scores, width) -> None:
    """The walk's state after block ``i``: what blocks i + 1.. read."""
    checkpoint.save(
        {
            "next": i + 1,
            "inputs": cache.inputs[i + 1],
            "unit_scores": dict(scores.unit_scores),
            "sums": None if width is None else width.sums,
            "runs": (cache.block_runs, cache.tail_runs),
        }
    )


def _restore(checkpoint: Checkpoint | None, cache, scores: Scores, width) -> int:
    """The block to start from: 0, or the one after the last saved by this run."""
    state = None if checkpoint is None else checkpoint.load()
    if state is None:
        return 0
    start = state["next"]
    cache.inputs[start] = state["inputs"]
    scores.unit_scores = state["unit_scores"]
    if width is not None:
        width.sums = state["sums"]
    cache.block_runs, cache.tail_runs = state["runs"]
    return start


def _stream_fine(
    source: BlockSource, cfg: PruneConfig, calib: CalibData, scores: Scores, progress: bool
) -> Scores:
    """Fine-grained scores: the graph from block 0, a forward pass, then the reverse pass
    that scores each block's units (``stream.fine``)."""
    from depthcut.stream.fine import stream_fine_model, stream_fine_scores

    fm = stream_fine_model(source)
    scores.units = fm.units()
    cache = StreamCache(source, calib, progress)
    for i in forward_pass(source, progress):
        cache.advance(i)
    source.load_head()
    scores.unit_scores, scores.fine = stream_fine_scores(fm, cache, cfg, progress)
    scores.cost["forward_equivalents"] = cache.forward_equivalents
    scores.cost["streamed"] = True
    return scores
