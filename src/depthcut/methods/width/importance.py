"""Importance of heads and neurons (one number per unit, lower = pruned first).

* ``magnitude``: L2 norm of every weight the unit owns (producer rows, consumer columns).
* ``taylor``: Σ |g ⊙ w| over the same weights and output biases, with g the gradient of the
  next-token loss, summed over calibration batches (the lesson's head variant, extended from
  Q rows to Q, K, V rows and O columns).
* ``output_norm``: E_t ‖unit output‖₂ — the unit's slice of the consumer's input (a head's
  output before the output projection), averaged over real tokens.
* ``activation_frequency``: share of (real token, channel) pairs with |activation| > τ at the
  consumer's input: after the activation function, and for gated MLPs after gate ⊙ up.
* ``ls``: repair-aware — the error the consumer's least-squares refit cannot recover, in
  greedy removal order (``methods.width.repaired``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from depthcut.data import CalibData
from depthcut.errors import ConfigError
from depthcut.hftypes import LinearLike
from depthcut.importance.registry import get_importance, register_importance
from depthcut.methods.width.layers import WidthLayer
from depthcut.methods.width.repaired import ls_width_scores
from depthcut.ops import out_axis


def _part_axis(module: nn.Module, part) -> int:
    """The weight axis that indexes the part's channels."""
    return out_axis(module) if part.side == "out" else 1 - out_axis(module)


def _rows(module: nn.Module, part, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (the weight or its gradient) with the part's channels as rows."""
    return tensor.transpose(0, 1) if _part_axis(module, part) == 1 else tensor


def _per_unit(modules: dict, layer: WidthLayer, value) -> torch.Tensor:
    """Σ over parts and owned channels of ``value(module, part)`` (one number per row)."""
    total = torch.zeros(layer.size, dtype=torch.float64)
    for part in layer.parts:
        rows = value(modules[part.path], part).double()
        total += part.by_unit(rows).sum(-1)
    return total


def magnitude(modules: dict, layer: WidthLayer) -> list[float]:
    squares = _per_unit(modules, layer, lambda m, p: _rows(m, p, m.weight).detach().pow(2).sum(1))
    return squares.sqrt().tolist()


def _taylor_rows(module: LinearLike, part) -> torch.Tensor:
    rows = _rows(module, part, module.weight) * _rows(module, part, module.weight.grad)
    rows = rows.abs().sum(1)
    if part.side == "out" and getattr(module, "bias", None) is not None:
        rows = rows + (module.bias * module.bias.grad).abs()
    return rows.detach()


def taylor_terms(modules: dict, layer: WidthLayer) -> torch.Tensor:
    """Σ |g ⊙ w| per unit of ``layer`` from the gradients its modules hold now."""
    return _per_unit(modules, layer, _taylor_rows)


def taylor(model, layers, calib: CalibData, progress: bool = True) -> dict[str, list[float]]:
    modules = dict(model.named_modules())
    totals = {layer.id: torch.zeros(layer.size, dtype=torch.float64) for layer in layers}
    for batch in tqdm(calib.batches(), desc="taylor", disable=not progress):
        model.zero_grad(set_to_none=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = getattr(model(**batch, labels=labels, use_cache=False), "loss", None)
        if loss is None:
            raise ConfigError("taylor needs a model that returns a language-modeling loss")
        loss.backward()
        for layer in layers:
            totals[layer.id] += taylor_terms(modules, layer)
    model.zero_grad(set_to_none=True)
    return {k: v.tolist() for k, v in totals.items()}


def consumer_hook(layer: WidthLayer, stat, sums: dict, state: dict):
    """A forward pre-hook for ``layer``'s consumer adding ``stat`` of its input over the real
    tokens (``state["mask"]``: the current batch's attention mask) to ``sums[layer.id]``."""
    part = layer.parts[-1]

    def hook(module, args):
        x = part.by_unit(args[0][state["mask"]].double())  # [tokens, units, k]
        sums[layer.id] += stat(x).sum(0)

    return hook


def token_stat(metric: str, tau: float):
    """The per-token statistic of ``output_norm`` / ``activation_frequency``:
    [tokens, units, owned] → [tokens, units]."""
    if metric == "output_norm":
        return lambda x: x.norm(dim=-1)
    return lambda x: (x.abs() > tau).double().mean(-1)


def consumer_stats(
    model, layers, calib: CalibData, metric: str, stat, progress: bool = True
) -> dict[str, list[float]]:
    """Mean over real tokens of ``stat(x)`` ([tokens, units, owned] → [tokens, units]) of each
    consumer's input, from forward pre-hooks."""
    modules = dict(model.named_modules())
    sums = {layer.id: torch.zeros(layer.size, dtype=torch.float64) for layer in layers}
    state: dict[str, Any] = {"mask": None, "tokens": 0}
    handles = [
        modules[layer.parts[-1].path].register_forward_pre_hook(
            consumer_hook(layer, stat, sums, state)
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            for batch in tqdm(calib.batches(), desc=metric, disable=not progress):
                state["mask"] = batch["attention_mask"].bool()
                state["tokens"] += int(state["mask"].sum())
                model(**batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {k: (v / state["tokens"]).tolist() for k, v in sums.items()}


@register_importance("magnitude", family="width")
def _magnitude(model, layers, calib, tau: float, progress: bool) -> dict[str, list[float]]:
    modules = dict(model.named_modules())
    return {layer.id: magnitude(modules, layer) for layer in layers}


@register_importance("taylor", family="width")
def _taylor(model, layers, calib, tau: float, progress: bool) -> dict[str, list[float]]:
    return taylor(model, layers, calib, progress)


@register_importance("output_norm", family="width")
def _output_norm(model, layers, calib, tau: float, progress: bool) -> dict[str, list[float]]:
    stat = token_stat("output_norm", tau)
    return consumer_stats(model, layers, calib, "output_norm", stat, progress)


@register_importance("activation_frequency", family="width")
def _frequency(model, layers, calib, tau: float, progress: bool) -> dict[str, list[float]]:
    stat = token_stat("activation_frequency", tau)
    return consumer_stats(model, layers, calib, "activation_frequency", stat, progress)


@register_importance("ls", family="width")
def _ls(model, layers, calib, tau: float, progress: bool) -> dict[str, list[float]]:
    return ls_width_scores(model, layers, calib, progress)


_magnitude.data_free = True


def width_scores(
    model,
    layers: list[WidthLayer],
    calib: CalibData | None,
    metric: str,
    tau: float = 0.01,
    progress: bool = True,
) -> dict[str, list[float]]:
    """{layer id ("head:3"): [score per unit]}."""
    score = get_importance(metric, family="width")
    model.eval()
    if calib is None and not getattr(score, "data_free", False):
        raise ConfigError(f"width importance {metric!r} needs calibration data")
    return score(model, layers, calib, tau, progress)
