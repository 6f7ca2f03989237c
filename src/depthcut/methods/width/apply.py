"""Slice heads / neurons out of the real modules; keep per-layer sizes consistent."""

from __future__ import annotations

import copy

from torch import nn

from depthcut.errors import UnsupportedModelError
from depthcut.hftypes import HFModel
from depthcut.kinds import Kind
from depthcut.methods.width.layers import HEAD_ATTRS, WidthLayer
from depthcut.surgery.slice import slice_in, slice_out


def prune_width(model: nn.Module, layer: WidthLayer, remove: list[int]) -> None:
    """Remove units ``remove`` of ``layer`` from every module that owns their channels."""
    keep = layer.kept(remove)
    if not keep:
        raise UnsupportedModelError(f"{layer.module}: removing every {layer.kind} is not allowed")
    modules = dict(model.named_modules())
    for part in layer.parts:
        channels = part.channels(keep)
        (slice_out if part.side == "out" else slice_in)(modules[part.path], channels)
    if layer.kind is Kind.HEAD:
        _sync_head_attrs(model, modules[layer.module], len(keep) * layer.q_heads_per_unit, layer)


def _sync_head_attrs(model: HFModel, attention: HFModel, heads: int, layer) -> None:
    """Write this layer's head counts where its attention reads them (``HEAD_ATTRS``); a
    ``config.X`` entry gives the attention its own copy of the config first."""
    kv = heads // layer.q_heads_per_unit
    values = {"heads": heads, "kv_heads": kv, "q_width": heads * layer.head_dim}
    for attr, what in HEAD_ATTRS.get(model.config.model_type, {}).items():
        target = attention
        if attr.startswith("config."):
            if attention.config is model.config:
                attention.config = copy.copy(model.config)
            target, attr = attention.config, attr.removeprefix("config.")
        setattr(target, attr, values[what])
