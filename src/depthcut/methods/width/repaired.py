"""Repair-aware importance of heads and neurons (``--width-importance ls``).

A unit owns input channels of one consumer layer (attention output projection, MLP
down-projection), and ``--repair ls`` refits that consumer on the kept channels. So a unit
costs what the refit *cannot* recover, and that depends on which other units are gone. With
X the consumer's input on the calibration tokens, G = Xᵀ D X and H = (G + λI)⁻¹, removing the
channel group S of the current weights W and refitting the rest optimally leaves (the optimal
brain surgeon step, in block form, as in SparseGPT / ZipLM):

    ΔE(S) = tr(W_S (H_SS)⁻¹ W_Sᵀ),   W ← W − W_S (H_SS)⁻¹ H_S,   H ← H − H_:S (H_SS)⁻¹ H_S

Each layer's units are removed greedily in that order, cheapest first (size / 64 units a
step), and a unit's score is the marginal error per unit at its step (made non-decreasing
along the order), so the global pick, lowest first, follows every layer's greedy order and
compares layers by marginal cost. D weights each token by 1 / mean(h²) of the *block's*
residual-stream input, so ΔE is the error added to the stream relative to the stream:
comparable across layers (weighting by the consumer's own input instead gave SmolLM2 neurons
at 25%: 20.99 vs 20.90, normalising per layer). Where a norm sits between the consumer and
the stream (Gemma's post-norms), an error e in the consumer's output reaches the stream scaled
by that norm's gain, so each token is also weighted by mean(z²) / mean(y²) of the norm's
output z over its input y (its gain, taken as isotropic).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from depthcut.calibrate import RollingCache
from depthcut.data import CalibData
from depthcut.graph.structure import discover_structure
from depthcut.hftypes import LinearLike
from depthcut.methods.width.layers import WidthLayer
from depthcut.ops import is_conv1d

STEPS = 64  # greedy steps per layer: size // STEPS units removed together per step
DAMP = 1e-2  # λ as a fraction of G's mean diagonal (SparseGPT's dampening)
COMPACT_EVERY = 4  # greedy steps between compactions: each copies H once, a step's update ≈ 2
SLAB = 512  # rows or columns of H moved at a time (a slab-sized temporary)


def add_gram(grams: dict, key: str, x: torch.Tensor, weights: torch.Tensor) -> None:
    """``grams[key] += Xᵀ diag(weights) X`` of one batch's tokens, a slab of rows at a time:
    each slab's product over the upper triangle in float32 (half the time of float64 on a CPU,
    2e-7 relative error for 1,024 tokens of an 8,960-wide input; the lower triangle is its
    mirror, so half the products of the whole matrix), added in place into the float64 sum in
    which every solve runs. Only slab-sized temporaries: a whole float32 product, promoted to
    float64 by the add, was 1.4 GB beside an 8,960² sum."""
    xf = x.float()
    xw = xf * weights.float()[:, None]
    n = xf.shape[1]
    if key not in grams:
        grams[key] = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    gram = grams[key]
    for start in range(0, n, SLAB):
        end = min(n, start + SLAB)
        part = xw[:, start:end].T @ xf[:, start:]  # rows start:end, columns start:
        gram[start:end, start:].add_(part)
        gram[end:, start:end].add_(part[:, end - start :].T)


class GramHooks:
    """Forward hooks accumulating, for each of ``layers``, Xᵀ D X of its consumer's input over
    the real tokens, D = 1 / mean(h²) of its block's input h (times the post-norm's gain, see
    the module docstring). ``state["mask"]`` must hold the current batch's attention mask
    while a block runs."""

    def __init__(
        self, layers: list[WidthLayer], blocks: list[nn.Module] | nn.ModuleList, modules: dict
    ):
        self.grams: dict[str, torch.Tensor] = {}
        self.state: dict = {"mask": None}
        self.handles = []
        for i in sorted({w.block for w in layers}):
            hook = blocks[i].register_forward_pre_hook(self._block_hook(i), with_kwargs=True)
            self.handles.append(hook)
        for w in layers:
            consumer = modules[w.parts[-1].path]
            self.handles.append(consumer.register_forward_pre_hook(self._consumer_hook(w)))
            if w.post_norms:
                norm = modules[w.post_norms[0]]
                self.handles.append(norm.register_forward_hook(self._norm_hook(w)))

    def _block_hook(self, i: int):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            h = h[self.state["mask"]].double()
            self.state[i] = 1.0 / h.pow(2).mean(-1).clamp_min(1e-12)

        return hook

    def _consumer_hook(self, layer: WidthLayer):
        def hook(module, args):
            x = args[0][self.state["mask"]]  # add_gram multiplies in float32
            if layer.post_norms:
                self.state[layer.id] = x  # weighted once the norm has run
            else:
                self._add(layer, x, self.state[layer.block])

        return hook

    def _norm_hook(self, layer: WidthLayer):
        def hook(module, args, output):
            mask = self.state["mask"]
            y, z = args[0][mask].double(), output[mask].double()
            gain = z.pow(2).mean(-1) / y.pow(2).mean(-1).clamp_min(1e-12)
            self._add(layer, self.state.pop(layer.id), self.state[layer.block] * gain)

        return hook

    def _add(self, layer: WidthLayer, x: torch.Tensor, weights: torch.Tensor) -> None:
        add_gram(self.grams, layer.id, x, weights)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def spd_inverse(h: torch.Tensor) -> torch.Tensor:
    """Inverse of (a batch of) symmetric positive definite matrices, through Cholesky: the
    batched LU inverse of this torch build fails on CPU for 3 × 192 × 192 float64 blocks
    (MKL's DLASWP rejects a parameter; SmolLM2's KV groups are 192 channels wide)."""
    return torch.cholesky_inverse(torch.linalg.cholesky(h))


def _unit_errors(w: torch.Tensor, hinv: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """ΔE of removing each unit alone: idx [units, owned] channel indices."""
    if idx.shape[1] == 1:  # neurons: ‖w_c‖² / H_cc, no [units, out] temporaries
        cols = idx[:, 0]
        return torch.linalg.vector_norm(w, dim=0)[cols].square() / hinv.diagonal()[cols]
    h = hinv[idx[:, :, None], idx[:, None, :]]  # [units, owned, owned]
    ws = w[:, idx].permute(1, 0, 2)  # [units, out, owned]
    return (ws @ spd_inverse(h) * ws).sum((1, 2))


def damped_inverse_(gram: torch.Tensor) -> torch.Tensor:
    """(G + λI)⁻¹ computed in the storage of ``gram`` (Cholesky factor, then its inverse:
    no second width² matrix on the CPU; 8,960² float64 is 0.64 GB); returns ``gram``."""
    gram.diagonal().add_(DAMP * (float(gram.diagonal().mean()) or 1.0))  # all-zero inputs too
    if lapack_ready(gram):
        return _lapack_inverse_(gram)
    torch.linalg.cholesky(gram, out=gram)
    return torch.cholesky_inverse(gram, out=gram)


def lapack_ready(a: torch.Tensor) -> bool:
    """Whether LAPACK (through scipy) can work in ``a``'s own memory: a contiguous float64
    CPU matrix."""
    return a.device.type == "cpu" and a.dtype == torch.float64 and a.is_contiguous()


def _lapack_inverse_(h: torch.Tensor) -> torch.Tensor:
    """LAPACK's potrf and potri on ``h``'s own memory (``torch.linalg.cholesky(out=h)``
    allocates a second width² matrix), the result's upper triangle then mirrored down."""
    from scipy.linalg import lapack

    view = h.numpy().T  # Fortran order, the same memory: the lower triangle of G (symmetric)
    factor, info = lapack.dpotrf(view, lower=1, clean=0, overwrite_a=1)
    if info == 0:
        factor, info = lapack.dpotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        raise torch.linalg.LinAlgError(f"the damped gram is not positive definite ({info})")
    if not np.shares_memory(factor, view):  # LAPACK worked on a copy after all
        view[...] = factor
    return _mirror_upper_(h)


def _mirror_upper_(h: torch.Tensor) -> torch.Tensor:
    """Copy ``h``'s upper triangle onto its lower one, a slab of rows at a time."""
    for start in range(0, h.shape[0], SLAB):
        end = min(h.shape[0], start + SLAB)
        h[start:end, :start] = h[:start, start:end].T
        block = h[start:end, start:end]
        block.copy_(block.triu() + block.triu(1).T)
    return h


def greedy_order(
    weight: torch.Tensor, gram: torch.Tensor, table, steps: int = STEPS, consume: bool = False
) -> list:
    """[(units removed at this step, ΔE of the step)] of one layer's greedy removal down to one
    unit (``weight`` [out, in], dense orientation; ``table[u]``: the input channels unit u
    owns; ``gram``: Xᵀ D X of the consumer's input, overwritten when ``consume``).

    A removed channel's row and column of H are zero after its step, so every few steps the
    removed channels are dropped from H and W (``Live.compact``): the steps' updates shrink
    with the layer (≈ 2.5× less work over the whole order than updating all width² entries)."""
    live = Live(weight, damped_inverse_(gram if consume else gram.clone()), table)
    chunk, order = max(1, len(table) // steps), []
    units = live.alive.nonzero().flatten()
    while len(units) > 1:
        errors = _unit_errors(live.w, live.hinv, live.where[live.idx[units]])
        picked = units[torch.topk(errors, min(chunk, len(units) - 1), largest=False).indices]
        order.append((picked.tolist(), live.remove(picked)))
        if len(order) % COMPACT_EVERY == 0:
            live.compact()
        units = live.alive.nonzero().flatten()
    return order


class Live:
    """The greedy removal's state: W and H restricted to the channels still in (a prefix
    view of H's original storage), ``where[c]``: channel c's position in them, -1 once gone."""

    def __init__(self, weight: torch.Tensor, hinv: torch.Tensor, table) -> None:
        self.w = weight.detach().double().clone()
        self.storage, self.hinv = hinv, hinv
        self.idx = torch.tensor(table, dtype=torch.long, device=hinv.device)
        self.alive = torch.ones(len(table), dtype=torch.bool, device=hinv.device)
        self.where = torch.arange(hinv.shape[0], device=hinv.device)
        self.gone = torch.zeros(hinv.shape[0], dtype=torch.bool, device=hinv.device)

    def remove(self, picked: torch.Tensor) -> float:
        """The OBS step removing units ``picked``: W and H updated, ΔE returned."""
        cols = self.where[self.idx[picked].flatten()]
        w, hinv = self.w, self.hinv
        inv = spd_inverse(hinv[cols][:, cols])
        delta = float(torch.trace(w[:, cols] @ inv @ w[:, cols].T))
        w -= w[:, cols] @ inv @ hinv[cols, :]
        hinv.addmm_(hinv[:, cols] @ inv, hinv[cols, :], alpha=-1.0)  # no width² temporary
        self.alive[picked] = False
        self.gone[cols] = True
        return delta

    def compact(self) -> None:
        """Drop the removed channels' rows and columns, in H's own storage (slabs of rows,
        then of columns, moved towards the start: a kept index never precedes its target)."""
        kept = (~self.gone).nonzero().flatten()
        n, size = len(kept), self.hinv.shape[0]
        for start in range(0, n, SLAB):
            rows = kept[start : start + SLAB]
            self.storage[start : start + len(rows), :size] = self.storage[rows, :size]
        for start in range(0, n, SLAB):
            cols = kept[start : start + SLAB]
            self.storage[:n, start : start + len(cols)] = self.storage[:n, cols]
        self.hinv = self.storage[:n, :n]
        self.w = self.w[:, kept]
        position = torch.cumsum(~self.gone, 0) - 1
        on = self.where >= 0
        self.where[on] = torch.where(self.gone[self.where[on]], -1, position[self.where[on]])
        self.gone = torch.zeros(n, dtype=torch.bool, device=self.gone.device)


def greedy_scores(
    weight: torch.Tensor, gram: torch.Tensor, table, steps: int = STEPS, consume: bool = False
):
    """Per-unit scores of one layer: the marginal error per unit at the greedy step that
    removes it, non-decreasing along the greedy order; the last unit left scores above all."""
    scores = torch.zeros(len(table), dtype=torch.float64)
    level, left = 0.0, set(range(len(table)))
    for units, delta in greedy_order(weight, gram, table, steps, consume):
        level = max(level, delta / len(units))
        scores[units] = level
        left -= set(units)
    scores[list(left)] = 2 * level + 1.0
    return scores.tolist()


def consumer_weight(module: LinearLike) -> torch.Tensor:
    """The consumer's weight as [out, in] (GPT-2's Conv1D stores it transposed)."""
    return module.weight.T if is_conv1d(module) else module.weight


def layer_scores(modules: dict, layers: list[WidthLayer], grams: dict) -> dict[str, list[float]]:
    """{layer id: greedy scores} from the consumers' grams (taken out of ``grams`` and
    consumed, one layer at a time)."""
    out = {}
    for w in layers:
        part = w.parts[-1]
        weight = consumer_weight(modules[part.path])
        gram = grams.pop(w.id).to(weight.device)  # becomes its own inverse: one matrix
        out[w.id] = greedy_scores(weight, gram, part.table, consume=True)
    return out


def block_ls_scores(cache, i: int, modules: dict, layers: list[WidthLayer]) -> dict:
    """{layer id: greedy scores} of block ``i``'s ``layers``: their grams collected while
    ``cache`` advances through block ``i``, reduced across processes, ordered, released."""
    hooks = GramHooks(layers, cache.blocks, modules)
    try:
        cache.advance(i, before=lambda b: hooks.state.update(mask=cache.masks(b).bool()))
    finally:
        hooks.remove()
    _all_reduce(hooks.grams)
    return layer_scores(modules, layers, hooks.grams)


@torch.no_grad()
def ls_width_scores(model, layers, calib: CalibData, progress: bool = True):
    """Repair-aware scores of every layer, block by block on a rolling block-input cache:
    one forward in all, one block's grams in memory at a time (all of them at once would be
    layers × width² float64: 18 GB for a 1.5B model with an 8,960-wide MLP)."""
    modules = dict(model.named_modules())
    cache = RollingCache(model, discover_structure(model), calib, progress)
    out: dict[str, list[float]] = {}
    for i in tqdm(range(cache.num_blocks), desc="ls (grams)", disable=not progress):
        here = [w for w in layers if w.block == i]
        if here:
            out |= block_ls_scores(cache, i, modules, here)
        else:
            cache.advance(i)
    return out


def _all_reduce(grams: dict) -> None:
    """Data-parallel scoring: the grams are sums over tokens, so every process adds the
    others' and then computes the single-process scores."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for key in sorted(grams):
            dist.all_reduce(grams[key])
