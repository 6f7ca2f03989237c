"""Least-squares repair (``--repair ls``): ReplaceMe's fold, at every removed run of sublayers.

The block stack is a sequence of residual slots attention_0, mlp_0, attention_1, … A plan
removes some of them (a block removes both of its slots). For every maximal run of removed
slots, the last kept slot before it writes into the residual stream through one linear layer W
(an MLP down-projection or an attention output projection). With M = W's output, H = the
residual stream after the run as the pruned model computes it and Y = the dense model's, a
d × d map T minimises, over the real calibration tokens,

    Σ_t ‖M_t T − (M_t + Y_t − H_t)‖² + λ ‖T − I‖²      (XᵀX, XᵀY accumulated in float64)

so that the repaired stream H − M + M T ≈ Y. T is folded into W (``W ← Tᵀ W``, ``b ← b T``;
GPT-2 ``Conv1D``: ``W ← W T``): no parameter is added. Runs are repaired in order, each on the
activations of the model repaired so far, always towards the dense model's stream. A run that
starts at the first slot has no writer before it and is left as it is (reported). A run that
ends with an attention slot whose MLP stays would need the target inside that block: refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from depthcut.calibrate import BlockCache
from depthcut.data import CalibData
from depthcut.errors import ConfigError, UnsupportedModelError
from depthcut.graph.capture import output_tensor
from depthcut.graph.structure import ModelStructure
from depthcut.importance import functional as F
from depthcut.kinds import Kind
from depthcut.ops import is_conv1d
from depthcut.planning.plan import Plan
from depthcut.units.discover import Unit

SLOTS = (Kind.ATTENTION, Kind.MLP)


@dataclass(frozen=True)
class Run:
    """Removed slots ``units``; ``writer`` (block, kind) is refit; the run ends after block
    ``end``'s MLP slot, so the target is the dense input of block ``end + 1``."""

    writer: tuple[int, Kind] | None
    units: tuple[Unit, ...]
    end: int


def _removed_slots(plan: Plan) -> set[tuple[int, Kind]]:
    slots = set()
    for a in plan.actions:
        if a.kind.family != "depth":
            continue
        slots |= {(a.block, k) for k in SLOTS} if a.kind is Kind.BLOCK else {(a.block, a.kind)}
    return slots


def _units(group: list[tuple[int, Kind]]) -> tuple[Unit, ...]:
    """The bypass units of a run: whole blocks where both slots go, else sublayers."""
    blocks = {b for b, _ in group}
    whole = {b for b in blocks if all((b, k) in group for k in SLOTS)}
    units = [Unit(Kind.BLOCK, b, "", (), 0) for b in sorted(whole)]
    return tuple(units + [Unit(k, b, "", (), 0) for b, k in group if b not in whole])


def runs(plan: Plan, structure: ModelStructure) -> list[Run]:
    """The maximal runs of removed slots, in order."""
    removed = _removed_slots(plan)
    order = [(b, k) for b in range(structure.num_blocks) for k in SLOTS]
    out, group = [], []
    for slot in [*order, None]:
        if slot is not None and slot in removed:
            group.append(slot)
            continue
        if group:
            first = order.index(group[0])
            if group[-1][1] is Kind.ATTENTION:
                raise ConfigError(
                    f"--repair ls: attention:{group[-1][0]} is removed but its MLP "
                    "stays; no residual target to fit (remove the block instead)"
                )
            writer = order[first - 1] if first > 0 else None
            out.append(Run(writer, _units(group), group[-1][0]))
        group = []

    return out


def writer_module(model: nn.Module, structure: ModelStructure, writer) -> nn.Module:
    block, kind = writer
    sub = structure.blocks[block].sublayer(kind)
    if sub is None or not sub.residual or sub.post_norms or sub.output is None:
        raise UnsupportedModelError(
            f"--repair ls: {kind}:{block} does not write into the "
            "residual stream through one linear layer"
        )
    return model.get_submodule(sub.output)


def _normal_equations(cache: BlockCache, run: Run, module: nn.Module, targets, fit) -> tuple:
    """(XᵀX, XᵀY, tokens) of the run's fit on the current model, over batches ``fit``; each
    token weighted by 1 / ‖target‖² (a closed-form stand-in for the cosine distance, so the
    few tokens with huge residual norms — attention sinks — do not decide the map alone)."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, a, o: seen.append(output_tensor(o)))
    xtx = xty = None
    tokens = 0
    try:
        for b in fit:
            seen.clear()
            with cache.with_bypass(()):
                cache.run_block(run.writer[0], b)
            mask = cache.masks(b).bool()
            target = targets[run.end + 1][b][mask].double()
            x = seen[-1][mask].double()
            y = (seen[-1] + targets[run.end + 1][b] - cache.inputs[run.end + 1][b])[mask].double()
            w = 1.0 / target.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)
            xtx = (w * x).T @ x if xtx is None else xtx + (w * x).T @ x
            xty = (w * x).T @ y if xty is None else xty + (w * x).T @ y
            tokens += x.shape[0]
    finally:
        handle.remove()
    return xtx, xty, tokens


def solve(xtx: torch.Tensor, xty: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_T ‖X T − Y‖² + λ‖T − I‖² from XᵀX and XᵀY, λ = ridge × mean(diag XᵀX): the
    ridge pulls towards the unrepaired layer (T = I), not towards zero."""
    lam = ridge * float(xtx.diagonal().mean())
    eye = torch.eye(xtx.shape[0], dtype=xtx.dtype, device=xtx.device)
    return torch.linalg.solve(xtx + lam * eye, xty + lam * eye)


@torch.no_grad()
def fold(module: nn.Module, t: torch.Tensor) -> None:
    """``module``'s output becomes its output times ``t`` (no parameter added)."""
    t = t.to(module.weight.dtype)
    weight = module.weight @ t if is_conv1d(module) else t.T @ module.weight
    module.weight.copy_(weight)
    if getattr(module, "bias", None) is not None:
        module.bias.copy_(module.bias @ t)


def split(n: int) -> tuple[range, range]:
    """(fit, check) batch indices: the even and the odd ones (both all when there is one)."""
    return (range(0, n, 2), range(1, n, 2)) if n > 1 else (range(n), range(n))


def check_nll(cache: BlockCache, batches) -> float:
    """Mean next-token loss of the current (bypassed) model over the real tokens of
    ``batches`` (held-back calibration text, never the evaluation text)."""
    return F.mean_nll((cache.logits(cache.inputs[-1][b]), cache.batches[b]) for b in batches)


def _fit_run(cache: BlockCache, run: Run, module: nn.Module, targets, ridge: float) -> dict:
    """Fit on the even calibration batches; keep the fold only if the next-token loss on the
    odd (held-back) ones drops, so a fit never makes the plan worse on them."""
    fit, check = split(len(cache.batches))
    xtx, xty, _ = _normal_equations(cache, run, module, targets, fit)
    before, saved = check_nll(cache, check), [p.detach().clone() for p in module.parameters()]
    fold(module, solve(xtx, xty, ridge))
    cache.refresh_from(run.writer[0])
    after = check_nll(cache, check)
    if after >= before:
        with torch.no_grad():
            for p, old in zip(module.parameters(), saved, strict=True):
                p.copy_(old)
        cache.refresh_from(run.writer[0])
    return {
        "run": [u.id for u in run.units],
        "writer": f"{run.writer[1]}:{run.writer[0]}",
        "check_nll_before": before,
        "check_nll_after": after,
        "kept": after < before,
    }


def repair_depth(
    model: nn.Module,
    structure: ModelStructure,
    fits: list[Run],
    calib: CalibData,
    ridge: float,
    progress: bool = True,
) -> dict:
    """Fold the least-squares maps of the removed ``fits`` (``runs(plan, structure)``) into
    ``model`` (in place, before the units are removed)."""
    if not fits:
        return {"runs": [], "forward_equivalents": 0.0}
    cache = BlockCache(model, structure, calib, progress)
    targets = [list(level) for level in cache.inputs]  # the dense stream
    done = []
    for run in fits:
        cache.removed.extend(run.units)
        if run.writer is None:
            cache.refresh_from(0)
            done.append({"run": [u.id for u in run.units], "writer": None, "kept": False})
            continue
        cache.refresh_from(run.writer[0])
        module = writer_module(model, structure, run.writer)
        done.append(_fit_run(cache, run, module, targets, ridge))
    return {"runs": done, "forward_equivalents": cache.forward_equivalents}
