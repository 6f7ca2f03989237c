"""Least-squares repair of fine-grained plans (``--repair ls`` after Prune(f)).

Prune(f) edits a block from inside (a layer becomes identity, widths are reconciled), so the
stream after the block drifts from the dense one. Every edited block's kept residual writers
(the attention output projection, the MLP down-projection) are refit on what the *pruned* block
computes, block after block along the pruned model's stream:

    A = argmin_A Σ_t w_t ‖X_t Aᵀ − (M_t + Y_t − H_t)‖² + λ ‖A − W‖²      (float64 grams)

X is the writer's input in the pruned block (a bias adds a column of ones), M its output, H the
stream after its sublayer and Y the dense model's stream there (after the MLP: the block's
output; after the attention: the input of the MLP's pre-norm), w_t = 1 / ‖Y_t‖². The attention
writer is fit first, the MLP writer then on the refit attention, so the MLP writer also
absorbs what the attention fit left. A writer is the whole layer (not a d × d map after it as
for removed runs): its input may be narrower than the stream, and the full refit is the better
fit. The new weights are written into the unsliced model at the positions the plan's slicing
keeps, so ``apply`` realises them: no parameter is added. The held-back calibration batches
choose the ridge λ (see ``FINE_RIDGES``) and check the whole repair: unless it lowers their
next-token loss, nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from depthcut.calibrate import BlockCache
from depthcut.data import CalibData
from depthcut.errors import ConfigError
from depthcut.graph.nodes import FNode
from depthcut.graph.structure import ModelStructure
from depthcut.kinds import Kind
from depthcut.methods.fine.model import FineModel
from depthcut.methods.fine.state import FineState
from depthcut.methods.fine.surgery import refit_blocker, sliced_positions
from depthcut.ops import is_conv1d
from depthcut.planning.plan import Plan
from depthcut.refit.ls import (
    check_nll,
    mid_module_path,
    mid_stream,
    recording,
    require_sequential,
    require_tokens,
    solve,
    split,
    token_weights,
    weighted_grams,
    writes_through_one_linear,
)

# candidate ridges (fractions of mean diag XᵀX), chosen on the check batches: a writer's input
# is up to 1536 channels of heavy-tailed activations, and on SmolLM2-135M (Algorithm 8, 25%;
# held-out perplexity 200.3 unrepaired) ridge 0.01 / 0.1 / 1 / 3 / 10 gave 1902 / 109 / 59.4 /
# 56.1 / 56.3, and the check loss ranked them the same way (5.60 / 4.11 / 3.84 / 3.81 / 3.88)
FINE_RIDGES = (0.3, 1.0, 3.0, 10.0)


@dataclass(frozen=True)
class Writer:
    """A kept residual writer of an edited block: ``path`` in the model, ``rel`` in the block,
    ``after`` the module whose input is the stream after it (None: the block output)."""

    block: int
    kind: Kind
    path: str
    rel: str
    node: FNode
    after: str | None


def _node_of(fm: FineModel, rel: str) -> FNode | None:
    """The graph node of module ``rel``: its own (a Linear) or the attention region that holds
    it (whose weights are never sliced)."""
    for n in fm.graph.module_nodes(("transform", "attention")):
        if n.module == rel or (n.kind == "attention" and rel.startswith(n.module + ".")):
            return n
    return None


def _writer(fm: FineModel, structure, cache, block: int, kind: Kind, state: FineState):
    """The block's ``kind`` writer when it can be refit, else (None, why not)."""
    root, sub = fm.root_of(block), structure.blocks[block].sublayer(kind)
    if not writes_through_one_linear(sub):
        return None, f"{kind}:{block} does not write into the stream through one linear layer"
    rel = root.relative(sub.output)
    node = _node_of(fm, rel)
    why = "not in the block graph" if node is None else refit_blocker(state, node)
    if why:
        return None, f"{sub.output}: {why}"
    after = None
    if kind is Kind.ATTENTION:
        try:
            require_sequential(cache, block)
            after = root.relative(mid_module_path(structure, block))
        except ConfigError:
            return None, f"{sub.output}: no stream between the block's attention and MLP"
    return Writer(block, kind, sub.output, rel, node, after), None


def _targets(cache: BlockCache, writer: Writer, batches) -> dict[int, torch.Tensor]:
    """{batch: the dense stream after ``writer``'s sublayer} (call before blocks are swapped)."""
    if writer.after is None:
        return {b: cache.inputs[writer.block + 1][b] for b in batches}
    return {b: mid_stream(cache, writer.block, b) for b in batches}


def _weight_t(module: nn.Module) -> torch.Tensor:
    """[in (+1 for a bias), out]: what X multiplies."""
    w = module.weight if is_conv1d(module) else module.weight.T
    bias = getattr(module, "bias", None)
    return w if bias is None else torch.cat([w, bias[None]])


def _set_weight_t(module: nn.Module, a: torch.Tensor) -> None:
    bias = getattr(module, "bias", None)
    w = a if bias is None else a[:-1]
    module.weight.copy_(w if is_conv1d(module) else w.T)
    if bias is not None:
        bias.copy_(a[-1])


def _fit(cache: BlockCache, writer: Writer, pruned: nn.Module, targets, fit, ridge) -> None:
    """Refit ``writer`` in the pruned block (swapped in) on batches ``fit``."""
    module = pruned.get_submodule(writer.rel)
    after = pruned.get_submodule(writer.after) if writer.after else None

    def rows():
        for b in fit:
            mask = cache.masks(b).bool()
            with recording(module, inputs=True) as xs, recording(module) as ms:
                if after is None:
                    h = cache.run_block(writer.block, b)
                else:
                    with recording(after, inputs=True) as hs:
                        cache.run_block(writer.block, b)
                    h = hs[-1]
            x, y = xs[-1][mask], targets[b][mask]
            if getattr(module, "bias", None) is not None:
                x = torch.cat([x, x.new_ones(x.shape[0], 1)], -1)
            yield x, ms[-1][mask] + y - h[mask], token_weights(y.double())

    xtx, xty, _ = weighted_grams(rows())
    prior = _weight_t(module).detach().double()
    _set_weight_t(module, solve(xtx, xty, ridge, prior).to(module.weight.dtype))


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
    widths = [_weight_t(copies[w.block].get_submodule(w.rel)).shape[0] for w in writers]
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
            _fit(cache, w, copies[j], targets[(w.block, w.kind)], fit, ridge)
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
    writers, skipped = [], []
    for block in sorted(states):
        for kind in (Kind.ATTENTION, Kind.MLP):
            found, why = _writer(fm, structure, cache, block, kind, states[block])
            writers.append(found) if found else skipped.append(why)
    if not writers:  # e.g. Gemma3: every writer reaches the stream through a post-norm
        return {"writers": [], "skipped": skipped, "kept": False, "forward_equivalents": 1.0}
    targets = {(w.block, w.kind): _targets(cache, w, fit) for w in writers}
    losses, best = {}, None
    for ridge in (None, *FINE_RIDGES):
        copies = _fitted_copies(cache, fm, states, writers, targets, fit, ridge, progress)
        if ridge is None:
            _min_tokens(writers, copies, fit, cache)
        losses[ridge] = check_nll(cache, check)
        if best is None or losses[ridge] < losses[best[0]]:
            best = (ridge, copies)
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
