"""Least-squares repair of fine-grained plans (``--repair ls`` after Prune(f)).

Prune(f) edits a block from inside (a layer becomes identity, widths are reconciled), so the
stream after the block drifts from the dense one. Every edited block's kept residual writers
(the attention output projection, the MLP down-projection) are refit on what the *pruned* block
computes (``methods.fine.refit``), block after block along the pruned model's stream. A
writer is the whole layer (not a d × d map after it as for removed runs): its input may be
narrower than the stream, and the full refit is the better fit. The new weights are written
into the unsliced model at the positions the plan's slicing keeps, so ``apply`` realises them:
no parameter is added. The held-back calibration batches choose the ridge λ (see
``FINE_RIDGES``) and check the whole repair: unless it lowers their next-token loss, nothing is
written.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from depthcut.calibrate import BlockCache
from depthcut.data import CalibData
from depthcut.graph.structure import ModelStructure
from depthcut.methods.fine.model import FineModel
from depthcut.methods.fine.refit import (
    Writer,
    block_writers,
    dense_targets,
    fit_writer,
    weight_t,
)
from depthcut.methods.fine.state import FineState
from depthcut.methods.fine.surgery import sliced_positions
from depthcut.planning.plan import Plan
from depthcut.refit.ls import check_nll, require_tokens, split

# candidate ridges (fractions of mean diag XᵀX), chosen on the check batches: a writer's input
# is up to 1536 channels of heavy-tailed activations, and on SmolLM2-135M (Algorithm 8, 25%;
# held-out perplexity 200.3 unrepaired) ridge 0.01 / 0.1 / 1 / 3 / 10 gave 1902 / 109 / 59.4 /
# 56.1 / 56.3, and the check loss ranked them the same way (5.60 / 4.11 / 3.84 / 3.81 / 3.88)
FINE_RIDGES = (0.3, 1.0, 3.0, 10.0)


def _write_back(model: nn.Module, writer: Writer, pruned: nn.Module, state: FineState) -> None:
    """Copy the refit writer of the pruned block into the unsliced model where ``apply``'s
    slicing will take it from."""
    original, refit = model.get_submodule(writer.path), pruned.get_submodule(writer.rel)
    for name, p in original.named_parameters(recurse=False):
        positions = sliced_positions(state, writer.node, original, name)
        new = getattr(refit, name).detach()
        if positions.shape != new.shape:
            raise RuntimeError(f"{writer.path}.{name}: refit {new.shape} ≠ slice {positions.shape}")
        p.data.view(-1)[positions.reshape(-1)] = new.reshape(-1).to(p.dtype)


def _min_tokens(writers: list[Writer], copies: dict, fit: range, cache: BlockCache) -> None:
    tokens = sum(int(cache.masks(b).sum()) for b in fit)
    widths = [weight_t(copies[w.block].get_submodule(w.rel)).shape[0] for w in writers]
    require_tokens(tokens, max(widths))


def _fitted_copies(cache, fm, states, writers, targets, fit, ridge, progress) -> dict:
    """Fresh pruned copies of the edited blocks swapped into ``cache``, their writers refit
    with ``ridge`` (``None``: as they are) block after block; the cache holds their stream."""
    copies = {j: fm.pruned_copy(fm.root_of(j), states[j]) for j in states}
    for j, pruned in copies.items():
        cache.blocks[j] = pruned
    edited = sorted(copies)
    if ridge is None:
        cache.refresh_from(edited[0])
        return copies
    desc = f"repair: fine (ridge {ridge:g})"
    for i, j in enumerate(tqdm(edited, desc=desc, disable=not progress)):
        for w in (w for w in writers if w.block == j):
            fit_writer(cache, w, copies[j], targets[(w.block, w.kind)], fit, ridge)
        cache.refresh_from(j, edited[i + 1] if i + 1 < len(edited) else None)
    return copies


@torch.no_grad()
def repair_fine(
    model: nn.Module,
    structure: ModelStructure,
    plan: Plan,
    calib: CalibData,
    progress: bool = True,
) -> dict:
    """Refit the kept writers of the blocks the plan's fine actions edit (in place, before
    ``apply``), with the ridge that gives the lowest loss on the check batches; returns what was
    fitted, the check losses and the cost."""
    actions = [a for a in plan.actions if a.kind.family == "fine"]
    if not actions:
        return {"blocks": [], "forward_equivalents": 0.0}
    fm = FineModel(model)
    states = fm.replay(actions)
    cache = BlockCache(model, structure, calib, progress)
    fit, check = split(len(cache.batches))
    writers: list = []
    skipped: list = []
    for block in sorted(states):
        found, why = block_writers(fm, cache, block, states[block])
        writers, skipped = writers + found, skipped + why
    if not writers:  # e.g. Gemma3: every writer reaches the stream through a post-norm
        return {"writers": [], "skipped": skipped, "kept": False, "forward_equivalents": 1.0}
    targets = {(w.block, w.kind): dense_targets(cache, w, fit) for w in writers}
    losses: dict[float | None, float] = {}
    best: tuple[float | None, Any] | None = None
    for ridge in (None, *FINE_RIDGES):
        copies = _fitted_copies(cache, fm, states, writers, targets, fit, ridge, progress)
        if ridge is None:
            _min_tokens(writers, copies, fit, cache)
        losses[ridge] = check_nll(cache, check)
        if best is None or losses[ridge] < losses[best[0]]:
            best = (ridge, copies)
    if best is None:
        raise ValueError("no ridge was tried")
    ridge, copies = best
    if ridge is not None:
        for w in writers:
            _write_back(model, w, copies[w.block], states[w.block])
    return {
        "writers": [w.path for w in writers],
        "skipped": skipped,
        "ridge": ridge,
        "kept": ridge is not None,
        "check_nll": {str(k): v for k, v in losses.items()},
        "forward_equivalents": cache.forward_equivalents,
    }
