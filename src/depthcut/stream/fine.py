"""Fine-grained units (thesis Chapter 3) with one block in memory at a time.

The block graph is exported from block 0, loaded, on the call the model makes on the probe
(recorded with stand-ins for the blocks, as in memory the probe forward records it), so the
graph and the plan's fingerprint are the in-memory ones. A forward pass fills the block-input
cache. The reverse pass then loads the blocks from the top down, back-propagates each batch's
next-token-loss gradient through the block re-run from its cached input (gradients summed over
batches in the parameters, as the in-memory backward leaves them), takes the block's channel
Taylor (the reconciliation choice of Prune(f)) and scores the block's units while it is still
loaded: Eq. 3.10 from the gradients, or Eq. 3.11 by running the pruned copy on the cached
input against the cached output. Two passes read the checkpoint twice.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from depthcut.config import PruneConfig
from depthcut.data import CalibData
from depthcut.errors import ConfigError
from depthcut.graph.structure import probe_inputs
from depthcut.losses import lm_loss
from depthcut.methods.fine.importance import FineScorer, channel_taylor
from depthcut.methods.fine.model import FineModel, cached_graph
from depthcut.methods.fine.state import UnitRefused
from depthcut.stream.reverse import block_backward, count_backward, output_grads
from depthcut.stream.source import BlockSource

STREAMED_FINE = ("angular", "bi", "taylor")


def stream_fine_model(source: BlockSource) -> FineModel:
    """The ``FineModel`` of the streamed model, its graph exported from block 0."""
    from depthcut.stream.score import StreamCache

    source.load_rest()
    probe = StreamCache(source, CalibData.of(probe_inputs(source.model)), progress=False)
    call = probe.calls[0][0]
    with source.loaded(0) as first:
        graph = cached_graph(first, call.args, call.kwargs, source.model.config)
    return FineModel.of_blocks(source.model, source.structure, graph)


def check_fine_streamable(cfg: PruneConfig) -> None:
    if cfg.importance not in STREAMED_FINE:
        raise ConfigError(
            f"--streaming scores fine-grained units with {', '.join(STREAMED_FINE)}; "
            f"{cfg.importance!r} runs the rest of the model per unit: use it in memory"
        )


def stream_fine_scores(
    fm: FineModel, cache, cfg: PruneConfig, progress: bool = True
) -> tuple[dict[str, Any], dict[str, dict]]:
    """Everything ``FineFamily.score`` puts in the scores: (unit scores, the ``fine`` record);
    ``cache``: a ``StreamCache`` whose forward pass is done (every block's input kept)."""
    source: BlockSource = cache.source
    scorer = FineScorer(fm, cache, cfg.metric, cfg.tokens)
    grads = output_grads(cache, _loss)
    found: dict[str, tuple] = {}
    units = fm.units()
    order = reversed(range(cache.num_blocks))
    bar = tqdm(total=cache.num_blocks, desc="fine (reverse)", disable=not progress)
    for i in source.walk(order):
        block = cache.blocks[i]
        grads = block_backward(cache, i, grads)  # gradients summed over the batches
        scorer.channel[i] = channel_taylor(fm.graph, block)
        for unit in (u for u in units if u.block == i):
            try:
                found[unit.id] = scorer.score(*fm.local(unit))[:2]
            except UnitRefused as err:
                found[unit.id] = (None, str(err))
        block.zero_grad(set_to_none=True)
        bar.update()
    bar.close()
    count_backward(cache)
    scores, alone, refused = {}, {}, {}
    for unit in units:  # in-memory order
        value, second = found[unit.id]
        if value is None:
            refused[unit.id] = second
        else:
            scores[unit.id], alone[unit.id] = value, second
    fine = {"channel": scorer.channel_json(), "alone": alone, "refused": refused}
    return scores, fine


def _loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """The loss the in-memory fine scorer back-propagates (``depthcut.losses.lm_loss``)."""
    return lm_loss(logits, batch["input_ids"], batch["attention_mask"])
