"""Width groups of each block: which channels of which modules one head or neuron owns.

Discovered from the traced block (the transforms that read a sublayer's input produce the
width; the transform that writes its output consumes it) plus small declarative data: head
counts from the config, and the layout of fused QKV projections per ``model_type``.
A head unit is a whole KV group (its KV head and the query heads that share it), so every
kept query head keeps its KV head and shapes stay valid for GQA/MQA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from depthcut.errors import UnsupportedModelError
from depthcut.graph.structure import ModelStructure
from depthcut.surgery.slice import in_features, out_features

# fused QKV layouts: "stacked" = [q heads | k heads | v heads], "per_head" = [q k v] per head
FUSED_QKV = {"gpt2": "stacked", "gpt_neox": "per_head"}
# attention attributes that hold a head count or the q width, per model type
HEAD_ATTRS = {"gpt2": {"num_heads": "heads", "split_size": "q_width"}}


@dataclass(frozen=True)
class Part:
    """Channels of one module owned by unit u: ``off + u*per_unit + j`` for each offset."""

    path: str
    side: str  # "out" (producer rows) or "in" (consumer columns)
    offsets: tuple[int, ...]
    per_unit: int

    def channels(self, units: list[int]) -> torch.Tensor:
        idx = [
            o + u * self.per_unit + j
            for u in units
            for o in self.offsets
            for j in range(self.per_unit)
        ]
        return torch.tensor(sorted(idx), dtype=torch.long)

    def by_unit(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """The last axis of ``x`` (this part's channels) regrouped as [..., size, owned]."""
        per = self.per_unit
        blocks = [x[..., o : o + size * per].unflatten(-1, (size, per)) for o in self.offsets]
        return torch.cat(blocks, dim=-1)


@dataclass(frozen=True)
class WidthLayer:
    kind: str  # "head" | "neuron"
    block: int
    module: str  # the attention or MLP module
    parts: tuple[Part, ...]
    size: int  # number of units
    unit_params: int  # parameters one unit owns
    q_heads_per_unit: int = 1
    head_dim: int = 1

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.block}"


def _unit_params(modules: dict, parts: tuple[Part, ...]) -> int:
    total = 0
    for part in parts:
        m = modules[part.path]
        other = in_features(m) if part.side == "out" else out_features(m)
        bias = 1 if part.side == "out" and getattr(m, "bias", None) is not None else 0
        total += len(part.offsets) * part.per_unit * (other + bias)
    return total


def head_counts(config) -> tuple[int, int, int]:
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return heads, kv, head_dim


def _head_parts(model: nn.Module, sub, block: int) -> tuple[tuple[Part, ...], int, int, int]:
    heads, kv, hd = head_counts(model.config)
    qpg = heads // kv
    layout = FUSED_QKV.get(model.config.model_type, "separate")
    if sub.output is None or (layout == "separate") != (len(sub.inputs) == 3):
        raise UnsupportedModelError(f"{sub.path}: cannot map attention heads to its projections")
    # this layer's own counts (earlier width pruning may have left fewer heads than the config)
    modules = dict(model.named_modules())
    if layout == "separate":
        kv = out_features(modules[sub.inputs[1]]) // hd
    else:
        kv = out_features(modules[sub.inputs[0]]) // (3 * hd)
    heads = kv * qpg
    if layout == "separate":
        q, k, v = sub.inputs
        parts = (Part(q, "out", (0,), qpg * hd), Part(k, "out", (0,), hd), Part(v, "out", (0,), hd))
    elif layout == "stacked":
        parts = (Part(sub.inputs[0], "out", (0, heads * hd, 2 * heads * hd), hd),)
    else:
        parts = (Part(sub.inputs[0], "out", (0,), 3 * hd),)
    return (*parts, Part(sub.output, "in", (0,), qpg * hd)), kv, qpg, hd


def _neuron_parts(modules: dict, sub) -> tuple[tuple[Part, ...], int]:
    if not sub.inputs or sub.output is None:
        raise UnsupportedModelError(f"{sub.path}: cannot find the MLP's in/out projections")
    width = in_features(modules[sub.output])
    if any(out_features(modules[p]) != width for p in sub.inputs):
        raise UnsupportedModelError(f"{sub.path}: MLP projections disagree on the hidden width")
    parts = tuple(Part(p, "out", (0,), 1) for p in sub.inputs)
    return (*parts, Part(sub.output, "in", (0,), 1)), width


def width_layers(model: nn.Module, structure: ModelStructure, kind: str) -> list[WidthLayer]:
    """One WidthLayer per block for ``kind`` ("head" or "neuron")."""
    modules = dict(model.named_modules())
    out = []
    for b in structure.blocks:
        sub = b.attention if kind == "head" else b.mlp
        if sub is None:
            raise UnsupportedModelError(f"{b.path}: no {kind} sublayer found")
        if kind == "head":
            parts, size, qpg, hd = _head_parts(model, sub, b.index)
        else:
            (parts, size), qpg, hd = _neuron_parts(modules, sub), 1, 1
        out.append(
            WidthLayer(kind, b.index, sub.path, parts, size, _unit_params(modules, parts), qpg, hd)
        )
    return out
