"""Least-squares repair (``--repair ls``): ReplaceMe's fold, at every removed run of sublayers.

The block stack is a sequence of residual slots attention_0, mlp_0, attention_1, … A plan
removes some of them (a block removes both of its slots). For every maximal run of removed
slots, the last kept slot before it writes into the residual stream through one linear layer W
(an MLP down-projection or an attention output projection). With M = W's output, H = the
residual stream after the run as the pruned model computes it and Y = the dense model's (after
an MLP slot: the next block's input; after an attention slot: the input of the MLP's pre-norm,
the stream between the two sublayers), a d × d map T minimises, over the real calibration
tokens,

    Σ_t ‖M_t T − (M_t + Y_t − H_t)‖² + λ ‖T − I‖²      (XᵀX, XᵀY accumulated in float64)

so that the repaired stream H − M + M T ≈ Y. T is folded into W (``W ← Tᵀ W``, ``b ← b T``;
GPT-2 ``Conv1D``: ``W ← W T``): no parameter is added. Runs are repaired in order, each on the
activations of the model repaired so far, always towards the dense model's stream. A run that
starts at the first slot has no writer before it and is left as it is (reported). A run that
ends with an attention slot of a block without a stream point between its sublayers (parallel
attention and MLP) has no target: refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from depthcut.calibrate import BlockCache
from depthcut.data import CalibData, sequences
from depthcut.errors import ConfigError, UnsupportedModelError
from depthcut.graph.capture import output_tensor
from depthcut.graph.structure import ModelStructure
from depthcut.importance import functional as F
from depthcut.kinds import Kind
from depthcut.ops import is_conv1d, weight_of
from depthcut.planning.plan import Plan
from depthcut.surgery.share import own
from depthcut.units.discover import Unit

SLOTS = (Kind.ATTENTION, Kind.MLP)
DEPTH_RIDGE = 1e-2  # λ of repair-aware depth scoring, as a fraction of mean(diag XᵀX)
# λ candidates of the depth repair, chosen per run on the held-back batches. On SmolLM2-135M
# (ShortGPT's blocks, held-out perplexity without repair 39.1 at 20% / 82.0 at 30%) a fixed
# ridge 0.01 / 0.1 / 1 gave 41.1 / 36.2 / 52.9 at 20% and 165 / 121 at 30%; the per-run choice
# picked 0.1 at 20% (36.2) but gave 76.2 at 25% where the fixed 0.01 gave 68.3 (none 58.7).
DEPTH_RIDGES = (1e-2, 1e-1, 1.0)


Slot = tuple[int, Kind]


@dataclass(frozen=True)
class Run:
    """Removed slots ``units``; ``writer`` (block, kind) is refit; ``end`` is the last removed
    slot: the target is the residual stream after it."""

    writer: Slot | None
    units: tuple[Unit, ...]
    end: Slot


def slots_of(kind: Kind, block: int) -> set[Slot]:
    """The residual slots a depth unit removes: both of a block's, or one sublayer's."""
    return {(block, k) for k in SLOTS} if kind is Kind.BLOCK else {(block, kind)}


def _removed_slots(plan: Plan) -> set[Slot]:
    slots = set()
    for a in plan.actions:
        if a.kind.family == "depth":
            slots |= slots_of(a.kind, a.block)
    return slots


def _units(group: list[tuple[int, Kind]]) -> tuple[Unit, ...]:
    """The bypass units of a run: whole blocks where both slots go, else sublayers."""
    blocks = {b for b, _ in group}
    whole = {b for b in blocks if all((b, k) in group for k in SLOTS)}
    units = [Unit(Kind.BLOCK, b, "", (), 0) for b in sorted(whole)]
    return tuple(units + [Unit(k, b, "", (), 0) for b, k in group if b not in whole])


def maximal_runs(removed: set[Slot], num_blocks: int) -> list[Run]:
    """The maximal runs of the ``removed`` slots, in order, each with its writer."""
    order = [(b, k) for b in range(num_blocks) for k in SLOTS]
    out, group = [], []
    for slot in [*order, None]:
        if slot is not None and slot in removed:
            group.append(slot)
            continue
        if group:
            first = order.index(group[0])
            writer = order[first - 1] if first > 0 else None
            out.append(Run(writer, _units(group), group[-1]))
        group = []
    return out


def runs(plan: Plan, structure: ModelStructure) -> list[Run]:
    """The maximal runs of the plan's removed slots, in order (each with a target)."""
    out = maximal_runs(_removed_slots(plan), structure.num_blocks)
    for run in out:
        if run.end[1] is Kind.ATTENTION:
            mid_module_path(structure, run.end[0])
    return out


def mid_module_path(structure: ModelStructure, block: int) -> str:
    """The module whose input is the residual stream between ``block``'s attention and MLP
    (the MLP's first pre-norm)."""
    info = structure.blocks[block]
    mlp, attn = info.mlp, info.attention
    if mlp is None or not mlp.pre_norms or (attn and mlp.pre_norms[0] in attn.pre_norms):
        raise ConfigError(
            f"--repair ls: attention:{block} is removed but its MLP stays and the block has "
            "no residual stream between them to fit (remove the block instead)"
        )
    return mlp.pre_norms[0]


@contextmanager
def recording(module: nn.Module, inputs: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collect ``module``'s outputs (or first inputs) while the context is open."""
    seen: list[torch.Tensor] = []

    def keep(out: torch.Tensor | None) -> None:
        if out is not None:
            seen.append(out)

    if inputs:
        handle = module.register_forward_pre_hook(lambda m, a: keep(a[0]))
    else:
        handle = module.register_forward_hook(lambda m, a, o: keep(output_tensor(o)))
    try:
        yield seen
    finally:
        handle.remove()


def mid_stream(cache: BlockCache, block: int, b: int) -> torch.Tensor:
    """The residual stream between ``block``'s attention and MLP on batch ``b`` (removed
    units bypassed)."""
    path = mid_module_path(cache.structure, block)
    module = cache.model.get_submodule(path)
    with recording(module, inputs=True) as seen, cache.with_bypass(()):
        cache.run_block(block, b)
    return seen[-1]


def require_sequential(cache: BlockCache, block: int) -> None:
    """Raise unless ``block``'s MLP reads the stream after its attention: in a parallel block
    (GPT-J, NeoX ``use_parallel_residual``) it reads the block input, and there is no stream
    between the sublayers to fit."""
    module = cache.model.get_submodule(mid_module_path(cache.structure, block))
    with recording(module, inputs=True) as seen:
        cache.run_block(block, 0)  # no bypass: the block as it is
    if torch.equal(seen[-1], cache.inputs[block][0]):
        raise ConfigError(
            f"--repair ls: attention:{block} is removed but its MLP stays, and the block's "
            "attention and MLP run in parallel: no stream between them to fit (remove the "
            "block instead)"
        )


def stream_after(cache: BlockCache, slot: Slot, b: int) -> torch.Tensor:
    """The stream after removed ``slot`` as the current (bypassed) model computes it."""
    block, kind = slot
    return cache.inputs[block][b] if kind is Kind.ATTENTION else cache.inputs[block + 1][b]


def dense_targets(cache: BlockCache, fits: list[Run]) -> dict[Slot, list[torch.Tensor]]:
    """{run end: the dense stream after it, per batch} (before anything is bypassed)."""
    out = {}
    for run in fits:
        block, kind = run.end
        if kind is Kind.MLP:
            out[run.end] = list(cache.inputs[block + 1])
        else:
            require_sequential(cache, block)
            out[run.end] = [mid_stream(cache, block, b) for b in range(len(cache.batches))]
    return out


def writes_through_one_linear(sub) -> bool:
    """Whether a sublayer adds its output to the residual stream straight from one linear layer
    (no post-norm between), the layer a least-squares refit can change."""
    return sub is not None and sub.residual and not sub.post_norms and sub.output is not None


def require_tokens(tokens: int, unknowns: int) -> None:
    """Refuse a fit with fewer fitting tokens than unknowns per output (half the calibration
    fits, half checks), naming the calibration size that would do."""
    if tokens < unknowns:
        raise ConfigError(
            f"--repair ls: {tokens} fitting tokens for {unknowns} unknowns per output (half of "
            f"the calibration fits, half checks): give at least {2 * unknowns} calibration "
            "tokens (raise --n-samples or --seq-len)"
        )


def writer_module(model: nn.Module, structure: ModelStructure, writer) -> nn.Module:
    block, kind = writer
    sub = structure.blocks[block].sublayer(kind)
    if not writes_through_one_linear(sub):
        raise UnsupportedModelError(
            f"--repair ls: {kind}:{block} does not write into the "
            "residual stream through one linear layer"
        )
    return model.get_submodule(sub.output)


def token_weights(target: torch.Tensor) -> torch.Tensor:
    """1 / ‖target‖² per token (a closed-form stand-in for the cosine distance, so the few
    tokens with huge residual norms — attention sinks — do not decide the map alone)."""
    return 1.0 / target.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)


def writer_output(cache: BlockCache, writer: Slot, b: int) -> torch.Tensor:
    """The writer layer's output on batch ``b`` (removed units bypassed; what follows the
    writer cannot change it)."""
    module = writer_module(cache.model, cache.structure, writer)
    with recording(module) as seen, cache.with_bypass(()):
        cache.run_block(writer[0], b)
    return seen[-1]


def weighted_grams(rows) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(Σ (w x)ᵀ x, Σ (w x)ᵀ y, rows) in float64 over ``(x, y, w)`` row blocks."""
    xtx: torch.Tensor | None = None
    xty: torch.Tensor | None = None
    tokens = 0
    for x, y, w in rows:
        x, y, w = x.double(), y.double(), w.double()
        xtx = (w * x).T @ x if xtx is None else xtx + (w * x).T @ x
        xty = (w * x).T @ y if xty is None else xty + (w * x).T @ y
        tokens += x.shape[0]
    if xtx is None or xty is None:
        raise ValueError("weighted_grams: no rows")
    return xtx, xty, tokens


def _normal_equations(cache: BlockCache, run: Run, targets, fit) -> tuple:
    """(XᵀX, XᵀY, tokens) of the run's fit on the current model over batches ``fit``, X = the
    writer's output M, Y = M + target − stream, each token weighted by ``token_weights``."""

    def rows():
        for b in fit:
            mask = cache.masks(b).bool()
            m = writer_output(cache, run.writer, b)
            target = targets[run.end][b]
            y = m + target - stream_after(cache, run.end, b)
            yield m[mask], y[mask], token_weights(target[mask].double())

    return weighted_grams(rows())


def solve(
    xtx: torch.Tensor, xty: torch.Tensor, ridge: float, prior: torch.Tensor | None = None
) -> torch.Tensor:
    """argmin_T ‖X T − Y‖² + λ‖T − P‖² from XᵀX and XᵀY, λ = ridge × mean(diag XᵀX): the
    ridge pulls towards the unrepaired layer (``prior`` P; the identity map by default), not
    towards zero."""
    lam = ridge * (float(xtx.diagonal().mean()) or 1.0)  # all-zero inputs: T = P
    eye = torch.eye(xtx.shape[0], dtype=xtx.dtype, device=xtx.device)
    prior = eye if prior is None else prior.to(xtx.dtype)
    return torch.linalg.solve(xtx + lam * eye, xty + lam * prior)


@torch.no_grad()
def fold(module: nn.Module, t: torch.Tensor) -> None:
    """``module``'s output becomes its output times ``t`` (no parameter added)."""
    own(module)
    w = weight_of(module)
    t = t.to(w.dtype)
    w.copy_(w @ t if is_conv1d(module) else t.T @ w)
    bias = getattr(module, "bias", None)
    if bias is not None:
        bias.copy_(bias @ t)


def split(n: int) -> tuple[range, range]:
    """(fit, check) batch indices: the even and the odd ones (both all when there is one)."""
    return (range(0, n, 2), range(1, n, 2)) if n > 1 else (range(n), range(n))


def check_nll(cache: BlockCache, batches) -> float:
    """Mean next-token loss of the current (bypassed) model over the real tokens of
    ``batches`` (held-back calibration text, never the evaluation text)."""
    return F.mean_nll(
        pair
        for b in batches
        for pair in zip(cache.row_logits(cache.inputs[-1][b]), sequences(cache.batches[b]))
    )


def _fit_run(cache: BlockCache, run: Run, module: nn.Module, targets, ridges) -> dict:
    """Fit on the even calibration batches with each ridge of ``ridges``; keep the fold whose
    next-token loss on the odd (held-back) batches is lowest, and only if it is lower than
    without a fold, so a fit never makes the plan worse on them."""
    if run.writer is None:
        raise ValueError(f"{[u.id for u in run.units]}: no writer layer to fold into")
    block, kind = run.writer
    fit, check = split(len(cache.batches))
    xtx, xty, _ = _normal_equations(cache, run, targets, fit)
    own(module)
    saved = [p.detach().clone() for p in module.parameters()]
    losses = {None: check_nll(cache, check)}
    for ridge in ridges:
        _restore(module, saved)
        fold(module, solve(xtx, xty, ridge))
        cache.refresh_from(block)
        losses[ridge] = check_nll(cache, check)
    best = min(losses, key=lambda r: losses[r])
    if best != ridges[-1]:  # the last candidate is the one folded now
        _restore(module, saved)
        if best is not None:
            fold(module, solve(xtx, xty, best))
        cache.refresh_from(block)
    return {
        "run": [u.id for u in run.units],
        "writer": f"{kind}:{block}",
        "ridge": best,
        "check_nll": {str(k): v for k, v in losses.items()},
        "kept": best is not None,
    }


@torch.no_grad()
def _restore(module: nn.Module, saved: list[torch.Tensor]) -> None:
    for p, old in zip(module.parameters(), saved, strict=True):
        p.copy_(old)


def repair_depth(
    model: nn.Module,
    structure: ModelStructure,
    fits: list[Run],
    calib: CalibData,
    ridges: tuple[float, ...] = DEPTH_RIDGES,
    progress: bool = True,
) -> dict:
    """Fold the least-squares maps of the removed ``fits`` (``runs(plan, structure)``) into
    ``model`` (in place, before the units are removed), each with the ridge of ``ridges``
    that its held-back batches prefer."""
    if not fits:
        return {"runs": [], "forward_equivalents": 0.0}
    cache = BlockCache(model, structure, calib, progress)
    targets = dense_targets(cache, fits)
    done = []
    for run in fits:
        cache.removed.extend(run.units)
        if run.writer is None:
            cache.refresh_from(0)
            done.append({"run": [u.id for u in run.units], "writer": None, "kept": False})
            continue
        cache.refresh_from(run.writer[0])
        module = writer_module(model, structure, run.writer)
        done.append(_fit_run(cache, run, module, targets, ridges))
    return {"runs": done, "forward_equivalents": cache.forward_equivalents}
