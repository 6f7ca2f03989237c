"""LinearPatch (Chen et al., NeurIPS 2025) as a baseline against ``--repair ls``.

For every maximal run of removed blocks [i, j), X is the dense stream entering block i (what the
pruned model passes on) and Y the dense stream entering block j (what the kept blocks after the
run expect). In a Hadamard-rotated basis (H orthonormal, so massive outlier channels are spread
over all channels) the per-channel scale

    D_c = mean_t |(Y H)_tc| / mean_t |(X H)_tc|        (real calibration tokens)

aligns the magnitudes, and P = H diag(D) Hᵀ is applied to the stream at the interface (the
output of block i − 1, or of the token embedding): an explicit d × d module (``surgery.patch``),
d² parameters per run, counted. This is the training-free form of the paper; its optional
distillation of P is not done here. Runs of sublayers (no block boundary to patch) are refused.

H: Sylvester's construction times a Paley one (I: order q + 1 for a prime q ≡ 3 mod 4; II: order
2(q + 1) for a prime q ≡ 1 mod 4), which covers the usual widths (576 = 8·72, 640 = 32·20, 896 =
32·28, 3072 = 256·12, powers of two)."""

from __future__ import annotations

import math

import torch
from torch import nn

from depthcut.calibrate import BlockCache
from depthcut.data import CalibData
from depthcut.errors import ConfigError, UnsupportedModelError
from depthcut.graph.structure import ModelStructure
from depthcut.hftypes import HFModel
from depthcut.kinds import Kind
from depthcut.planning.plan import Plan
from depthcut.refit.ls import Run, runs
from depthcut.surgery.patch import insert_patch


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % k for k in range(2, math.isqrt(n) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[a, b] = χ(b − a), χ the quadratic character of Z_q."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in squares else -1.0 for a in range(1, q)])
    idx = torch.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q].double()


def _paley(q: int, kind: int) -> torch.Tensor:
    n = q + 1
    core = torch.zeros(n, n, dtype=torch.float64)
    core[0, 1:] = 1.0
    core[1:, 0] = -1.0 if kind == 1 else 1.0
    core[1:, 1:] = _jacobsthal(q)
    if kind == 1:
        return core + torch.eye(n, dtype=torch.float64)
    a = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    return torch.kron(core, a) + torch.kron(torch.eye(n, dtype=torch.float64), b)


def _base(m: int) -> torch.Tensor | None:
    """A Hadamard matrix of order ``m`` by Paley's constructions (1 and 2 trivially)."""
    if m in (1, 2):
        return torch.tensor([[1.0]] if m == 1 else [[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    if _is_prime(m - 1) and (m - 1) % 4 == 3:
        return _paley(m - 1, 1)
    if m % 2 == 0 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
        return _paley(m // 2 - 1, 2)
    return None


def hadamard(n: int) -> torch.Tensor:
    """An orthonormal Hadamard matrix of order ``n`` (float64): H Hᵀ = I, entries ±1/√n."""
    power = 1
    while n % power == 0:
        base = _base(n // power)
        if base is not None:
            h = base
            while h.shape[0] < n:
                h = torch.kron(torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64), h)
            return h / math.sqrt(n)
        power *= 2
    raise UnsupportedModelError(
        f"--repair patch: no Hadamard matrix of order {n} is built here (Sylvester × Paley); "
        "use --repair ls"
    )


def _block_span(run: Run, structure: ModelStructure) -> tuple[int, int]:
    """(i, j): the run removes blocks i … j − 1 whole (else refused)."""
    if any(u.kind is not Kind.BLOCK for u in run.units):
        ids = ", ".join(u.id for u in run.units)
        raise ConfigError(
            f"--repair patch bridges removed blocks; the run {ids} removes sublayers "
            "(use --repair ls)"
        )
    blocks = [u.block for u in run.units]
    return min(blocks), max(blocks) + 1


def _host(model: HFModel, structure: ModelStructure, i: int) -> str:
    """The module whose output is the stream entering the run: block i − 1, or the token
    embedding."""
    if i > 0:
        return structure.blocks[i - 1].path
    embedding = model.get_input_embeddings()
    return next(name for name, m in model.named_modules() if m is embedding)


def _scales(cache: BlockCache, i: int, j: int, h: torch.Tensor) -> torch.Tensor:
    """D_c = mean |Y H| / mean |X H| per rotated channel over the real calibration tokens."""
    num = den = torch.zeros((), dtype=torch.float64)
    for b in range(len(cache.batches)):
        mask = cache.masks(b).bool()
        x, y = cache.inputs[i][b][mask].double(), cache.inputs[j][b][mask].double()
        num, den = num + (y @ h).abs().sum(0), den + (x @ h).abs().sum(0)
    return num / den.clamp_min(1e-12)


@torch.no_grad()
def repair_patch(
    model: nn.Module, structure: ModelStructure, plan: Plan, calib: CalibData, progress: bool
) -> dict:
    """Insert a fitted LinearPatch after every removed run of blocks (in place, before
    ``apply``); returns the patches (hosts in the original numbering) and the cost."""
    if any(a.kind.family != "depth" for a in plan.actions):
        raise ConfigError("--repair patch bridges removed blocks; use --repair ls for this plan")
    spans = [_block_span(r, structure) for r in runs(plan, structure)]
    if not spans:
        return {"method": "patch", "patches": [], "forward_equivalents": 0.0}
    cache = BlockCache(model, structure, calib, progress)
    width = cache.inputs[0][0].shape[-1]
    h = hadamard(width).to(cache.inputs[0][0].device)
    patches = []
    for i, j in spans:
        d = _scales(cache, i, j, h)
        host = _host(model, structure, i)
        patch = insert_patch(model, host, width)
        patch.weight.copy_((h * d) @ h.T)
        patches.append({"host": host, "width": width, "blocks": [i, j], "params": width * width})
    return {
        "method": "patch",
        "patches": patches,
        "params_added": sum(p["params"] for p in patches),
        "forward_equivalents": cache.forward_equivalents,
    }
