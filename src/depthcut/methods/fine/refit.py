"""The least-squares refit of one pruned block's kept residual writers (the core of the fine
refit, ``depthcut.refit.fine``, and of the repair-aware fine importance ``ls``).

For a block edited by Prune(f), each kept writer (the attention output projection, the MLP
down-projection) is refit *whole* on what the pruned block computes:

    A = argmin_A Σ_t w_t ‖X_t Aᵀ − (M_t + Y_t − H_t)‖² + λ ‖A − W‖²      (float64 grams)

X is the writer's input in the pruned block (a bias adds a column of ones), M its output, H the
stream after its sublayer and Y the dense model's stream there (after the MLP: the block's
output; after the attention: the input of the MLP's pre-norm), w_t = 1 / ‖Y_t‖². The attention
writer is fit first, the MLP writer then on the refit attention, so it also absorbs what the
attention fit left.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from depthcut.calibrate import BlockCache
from depthcut.errors import ConfigError
from depthcut.graph.nodes import FNode
from depthcut.hftypes import LinearLike
from depthcut.kinds import Kind
from depthcut.methods.fine.model import FineModel
from depthcut.methods.fine.state import FineState
from depthcut.methods.fine.surgery import refit_blocker
from depthcut.ops import is_conv1d
from depthcut.refit.ls import (
    mid_module_path,
    mid_stream,
    recording,
    require_sequential,
    solve,
    token_weights,
    weighted_grams,
    writes_through_one_linear,
)
from depthcut.surgery.share import own


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
        if n.module == rel or (n.kind == "attention" and rel.startswith(n.path + ".")):
            return n
    return None


def _writer(fm: FineModel, cache: BlockCache, block: int, kind: Kind, state: FineState):
    """The block's ``kind`` writer when it can be refit, else (None, why not)."""
    structure = cache.structure
    root, sub = fm.root_of(block), structure.blocks[block].sublayer(kind)
    if sub is None or sub.output is None or not writes_through_one_linear(sub):
        return None, f"{kind}:{block} does not write into the stream through one linear layer"
    rel = root.relative(sub.output)
    node = _node_of(fm, rel)
    why = "not in the block graph" if node is None else refit_blocker(state, node)
    if why or node is None:
        return None, f"{sub.output}: {why}"
    after = None
    if kind is Kind.ATTENTION:
        try:
            require_sequential(cache, block)
            after = root.relative(mid_module_path(structure, block))
        except ConfigError:
            return None, f"{sub.output}: no stream between the block's attention and MLP"
    return Writer(block, kind, sub.output, rel, node, after), None


def block_writers(fm: FineModel, cache: BlockCache, block: int, state: FineState):
    """([writers of block ``block`` that can be refit, attention first], [why not, per other])."""
    writers, skipped = [], []
    for kind in (Kind.ATTENTION, Kind.MLP):
        found, why = _writer(fm, cache, block, kind, state)
        writers.append(found) if found else skipped.append(why)
    return writers, skipped


def dense_targets(cache: BlockCache, writer: Writer, batches) -> dict[int, torch.Tensor]:
    """{batch: the dense stream after ``writer``'s sublayer} (call before blocks are swapped)."""
    if writer.after is None:
        return {b: cache.inputs[writer.block + 1][b] for b in batches}
    return {b: mid_stream(cache, writer.block, b) for b in batches}


def weight_t(module: LinearLike) -> torch.Tensor:
    """[in (+1 for a bias), out]: what X multiplies."""
    w = module.weight if is_conv1d(module) else module.weight.T
    bias = getattr(module, "bias", None)
    return w if bias is None else torch.cat([w, bias[None]])


def _set_weight_t(module: LinearLike, a: torch.Tensor) -> None:
    own(module)
    bias = getattr(module, "bias", None)
    w = a if bias is None else a[:-1]
    module.weight.copy_(w if is_conv1d(module) else w.T)
    if bias is not None:
        bias.copy_(a[-1])


@torch.no_grad()
def fit_writer(cache: BlockCache, writer: Writer, pruned: nn.Module, targets, fit, ridge) -> None:
    """Refit ``writer`` in the pruned block (swapped into ``cache``) on batches ``fit``."""
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
    prior = weight_t(module).detach().double()
    _set_weight_t(module, solve(xtx, xty, ridge, prior).to(weight_t(module).dtype))
