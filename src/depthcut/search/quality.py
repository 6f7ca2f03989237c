"""The quality cost of every option, after the repair that would be applied with it.

One rolling walk over the blocks (one forward of the calibration set in all): while block i
runs on its cached inputs, hooks collect what every option of block i would cost, in one unit:
the error it adds to the residual stream, Σ_t ‖e_t‖² / mean(h_t²) over the calibration tokens
(h_t the block's input), divided by the token count — the measure the repair-aware width scores
already compare layers by.

* Narrower attention / MLP: the optimal-brain-surgeon error left after the least-squares refit
  of the output projection, along the greedy removal order of ``methods.width.repaired``
  (the same order the plan removes units in).
* A removed sublayer or block: the error left after ReplaceMe's fold (``refit.ls``) into the
  last linear writer before it, from d × d statistics of that writer's output M and the target
  Z = M + (dense stream − pruned stream): min_T Σ ‖M T − Z‖² + λ‖T − I‖². A removal with no
  writer to fold into (the first block, post-norm blocks) costs its raw error.

Costs add up across blocks by assumption; ``depthcut.search.frontier`` re-measures assembled
plans, and the benchmark reports how well the sums rank them.
"""

from __future__ import annotations

import torch
from torch import nn

from depthcut.graph.capture import first_tensor, output_tensor
from depthcut.graph.structure import ModelStructure
from depthcut.kinds import Kind
from depthcut.methods.width.layers import WidthLayer
from depthcut.methods.width.repaired import consumer_weight, greedy_order
from depthcut.refit.ls import DEPTH_RIDGE, DEPTH_RIDGES, writes_through_one_linear
from depthcut.units.bypass import hook_target
from depthcut.units.discover import Unit


def fit_transform(a: torch.Tensor, b: torch.Tensor, ridge: float = DEPTH_RIDGE) -> torch.Tensor:
    """The ridge-regularised T of min Σ‖M T − Z‖² + λ‖T − I‖², from A = MᵀM and B = MᵀZ."""
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    lam = ridge * float(a.diagonal().mean()) or ridge
    return torch.linalg.solve(a + lam * eye, b + lam * eye)


def residual(a: torch.Tensor, b: torch.Tensor, c: float, t: torch.Tensor) -> float:
    """Σ‖M T − Z‖² from A = MᵀM, B = MᵀZ and c = Σ‖Z‖², for a given T."""
    return c - 2 * float((t * b).sum()) + float((t * (a @ t)).sum())


def fit_error(a: torch.Tensor, b: torch.Tensor, c: float, ridge: float = DEPTH_RIDGE) -> float:
    """Σ‖M T − Z‖² at the ridge-regularised optimum T, from A = MᵀM, B = MᵀZ and c = Σ‖Z‖²
    (T = I, no fit, leaves Σ‖Z − M‖²)."""
    return max(residual(a, b, c, fit_transform(a, b, ridge)), 0.0)


class FoldSums:
    """Weighted second moments of one fold: A = Mᵀ D M, B = Mᵀ D Z, c = Σ D ‖Z‖²."""

    def __init__(self) -> None:
        self.a: torch.Tensor | None = None
        self.b: torch.Tensor | None = None
        self.c = 0.0
        self.n = 0  # tokens

    def add(self, m: torch.Tensor, z: torch.Tensor, d: torch.Tensor) -> None:
        md = m * d[:, None]
        a, b = md.T @ m, md.T @ z
        self.a = a if self.a is None else self.a + a
        self.b = b if self.b is None else self.b + b
        self.c += float((z.pow(2).sum(-1) * d).sum())
        self.n += m.shape[0]

    def _ab(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.a is None or self.b is None:
            raise ValueError("no statistics were added")
        return self.a, self.b

    def error(self) -> float:
        """The least error of a fitted T (``fit_error``)."""
        return fit_error(*self._ab(), self.c)

    def transform(self, ridge: float = DEPTH_RIDGE) -> torch.Tensor:
        """The fitted T under ``ridge``."""
        return fit_transform(*self._ab(), ridge)

    def error_of(self, t: torch.Tensor) -> float:
        """Σ D ‖M T − Z‖² of these statistics under a given T."""
        return residual(*self._ab(), self.c, t)


class DepthHooks:
    """Per block: the raw and fold errors of removing its attention, its MLP or all of it.

    ``previous`` holds the last block's MLP writer output (per batch, real tokens), the writer
    a removal of this block's attention or of the block folds into. For the batches in
    ``probed`` the writers' whole outputs are kept too (``full[b]``), for ``search.probe``."""

    def __init__(
        self, model: nn.Module, structure: ModelStructure, i: int, previous, probed=()
    ) -> None:
        self.state: dict = {}
        self.probed, self.full = set(probed), dict[int, dict]()
        self.previous, self.written = previous, list[torch.Tensor]()
        self.raw = {"attention": 0.0, "mlp": 0.0, "block": 0.0}
        self.fits = {"attention": FoldSums(), "mlp": FoldSums(), "block": FoldSums()}
        self.checks = {"attention": FoldSums(), "mlp": FoldSums(), "block": FoldSums()}  # probed
        self.tokens = 0
        info, modules = structure.blocks[i], dict(model.named_modules())
        self.handles = [modules[info.path].register_forward_hook(self._block, with_kwargs=True)]
        for kind in ("attention", "mlp"):
            path, _ = hook_target(structure, Unit(Kind(kind), i, "", (), 0))
            self.handles.append(modules[path].register_forward_hook(self._keep(kind)))
            sub = info.sublayer(kind)
            if sub is not None and sub.output is not None and writes_through_one_linear(sub):
                writer = modules[sub.output]
                self.handles.append(writer.register_forward_hook(self._keep(kind + ".writer")))

    def _keep(self, key: str):
        def hook(module, args, output):
            out = output_tensor(output)
            self.state[key] = out[self.state["mask"]].double()
            if self.state["batch"] in self.probed and key.endswith(".writer"):
                self.full.setdefault(self.state["batch"], {})[key] = out.detach()

        return hook

    def _block(self, module, args, kwargs, output):
        mask = self.state["mask"]
        x = first_tensor(args, kwargs)[mask].double()
        delta = output_tensor(output)[mask].double() - x
        d = 1.0 / x.pow(2).mean(-1).clamp_min(1e-12)
        a, m = self.state["attention"], self.state["mlp"]
        for key, e in (("attention", a), ("mlp", m), ("block", delta)):
            self.raw[key] += float((e.pow(2).sum(-1) * d).sum())
        self._add_fits(a, m, delta, d)
        self.written.append(self.state.get("mlp.writer"))
        self.tokens += x.shape[0]

    def _add_fits(self, a, m, delta, d) -> None:
        """The fold statistics of this batch: fitted on, or (a probed batch) checked on."""
        b = self.state["batch"]
        sums = self.checks if b in self.probed else self.fits
        prev = self.previous[b] if self.previous else None
        if prev is not None:
            sums["attention"].add(prev, prev + a, d)
            sums["block"].add(prev, prev + delta, d)
        if self.state.get("attention.writer") is not None:
            w = self.state["attention.writer"]
            sums["mlp"].add(w, w + m, d)

    def transforms(self) -> dict[str, torch.Tensor | None]:
        """{kind: T of its fold, None where it is not repaired}: fitted on the batches not
        probed, with the ridge of ``DEPTH_RIDGES`` (or no fold) whose error on the probed
        batches is least — as the repair picks its ridge on held-back batches."""
        out: dict[str, torch.Tensor | None] = {}
        for key in self.raw:
            fit, check = self.fits[key], self.checks[key]
            if fit.a is None or check.a is None:
                out[key] = None
                continue
            eye = torch.eye(fit.a.shape[0], dtype=fit.a.dtype, device=fit.a.device)
            candidates = [None, *(fit.transform(r) for r in DEPTH_RIDGES)]
            out[key] = min(candidates, key=lambda t: check.error_of(eye if t is None else t))
        return out

    def errors(self) -> dict[str, dict]:
        """{kind: {"error", "raw", "repaired"}} per token."""
        n = max(self.tokens, 1)
        out = {}
        for key, raw in self.raw.items():
            fit = self.fits[key]
            repaired = fit.a is not None
            error = min(fit.error() / fit.n, raw / n) if repaired else raw / n
            out[key] = {"error": error, "raw": raw / n, "repaired": repaired}
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def greedy_levels(order: list, size: int, kept_levels: list[int]) -> dict[int, dict]:
    """{units kept: {"error", "removed"}} of one width layer along its greedy order (a level
    inside a greedy step takes that step's units in order and its error pro rata)."""
    out: dict[int, dict] = {}
    for kept in kept_levels:
        if kept in (0, size):
            continue
        want, removed, error = size - kept, list[int](), 0.0
        for units, delta in order:
            take = min(len(units), want - len(removed))
            removed += units[:take]
            error += delta * take / len(units)
            if len(removed) == want:
                break
        out[kept] = {"error": error, "removed": sorted(removed)}
    return out


def width_levels(modules: dict, layer: WidthLayer, gram: torch.Tensor, kept_levels, n: int):
    """``greedy_levels`` of ``layer`` from its consumer's gram (consumed), errors per token."""
    part = layer.parts[-1]
    weight = consumer_weight(modules[part.path])
    order = greedy_order(weight, gram.to(weight.device), part.table, consume=True)
    levels = greedy_levels(order, layer.size, kept_levels)
    return {k: v | {"error": v["error"] / n} for k, v in levels.items()}
