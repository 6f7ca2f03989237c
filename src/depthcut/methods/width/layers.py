"""Width groups of each block: which channels of which modules one head or neuron owns.

Discovered from the traced block: the transforms that read a sublayer's input produce the
width, the transform that writes its output consumes it, and the views taken of each
producer's output (``split`` / ``chunk`` / slicing / per-head ``view``) say how a fused
projection's rows divide into q / k / v or gate / up (``graph.capture.channel_segments``), so
GPT-2's stacked ``c_attn``, GPT-NeoX's per-head interleaved ``query_key_value`` and Phi-3's
GQA ``qkv_proj`` / ``gate_up_proj`` need no table. The config gives the head size. A head unit
is a whole KV group (its KV head and the query heads that share it), so every kept query head
keeps its KV head and shapes stay valid for GQA/MQA. What the graph cannot show is where an
attention keeps its head counts: ``HEAD_ATTRS`` names those attributes per model type.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from depthcut.errors import UnsupportedModelError
from depthcut.graph.capture import channel_segments
from depthcut.graph.structure import ModelStructure, Sublayer
from depthcut.kinds import Kind, UnitRef
from depthcut.ops import in_features, out_features

# attention attributes that hold a head count ("config.X": the attention's own config copy)
HEAD_ATTRS = {
    "gpt2": {"num_heads": "heads", "split_size": "q_width"},
    "phi3": {"num_key_value_heads": "kv_heads", "config.num_attention_heads": "heads"},
}


@dataclass(frozen=True)
class Part:
    """Channels of one module that each unit owns: ``table[u]`` (same length for every u)."""

    path: str
    side: str  # "out" (producer rows) or "in" (consumer columns)
    table: tuple[tuple[int, ...], ...]

    def channels(self, units: list[int]) -> torch.Tensor:
        idx = [c for u in units for c in self.table[u]]
        return torch.tensor(sorted(idx), dtype=torch.long)

    def by_unit(self, x: torch.Tensor) -> torch.Tensor:
        """The last axis of ``x`` (this part's channels) regrouped as [..., units, owned]."""
        return x[..., torch.tensor(self.table, dtype=torch.long)]

    @property
    def owned(self) -> int:
        return len(self.table[0])


@dataclass(frozen=True)
class WidthLayer:
    """The ``size`` head (KV-group) or neuron units of one block's attention / MLP."""

    kind: Kind  # Kind.HEAD | Kind.NEURON
    block: int
    module: str  # the attention or MLP module
    parts: tuple[Part, ...]
    size: int  # number of units
    unit_params: int  # parameters one unit owns
    q_heads_per_unit: int = 1
    head_dim: int = 1
    post_norms: tuple[str, ...] = ()  # norms between the consumer and the residual stream

    @property
    def ref(self) -> UnitRef:
        return UnitRef(self.kind, self.block, self.module)

    @property
    def id(self) -> str:
        return self.ref.id

    def kept(self, removed) -> list[int]:
        """The units left after ``removed`` go, in order."""
        gone = set(removed)
        return [u for u in range(self.size) if u not in gone]


def _unit_params(modules: dict, parts: tuple[Part, ...]) -> int:
    total = 0
    for part in parts:
        m = modules[part.path]
        other = in_features(m) if part.side == "out" else out_features(m)
        bias = 1 if part.side == "out" and getattr(m, "bias", None) is not None else 0
        total += part.owned * (other + bias)
    return total


def head_counts(config) -> tuple[int, int, int]:
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return heads, kv, head_dim


def _segments(modules: dict, sub: Sublayer, run: int) -> list[tuple[str, tuple[int, ...]]]:
    """(producer path, its channels for one reader) for every producer of the sublayer."""
    out = []
    for path in sub.inputs:
        layout = channel_segments(sub.views.get(path, []), out_features(modules[path]), run)
        if layout is None:
            raise UnsupportedModelError(
                f"{path}: the views taken of its output do not split its channels into parts"
            )
        out += [(path, seg) for seg in layout]
    return out


def _tables(segments, per_unit: list[int]) -> dict[str, list[list[int]]]:
    """{path: table}: unit u owns channels ``seg[u*k:(u+1)*k]`` of each segment (k given)."""
    tables: dict[str, list[list[int]]] = {}
    for (path, seg), k in zip(segments, per_unit):
        units = [list(seg[u * k : (u + 1) * k]) for u in range(len(seg) // k)]
        if path in tables:
            tables[path] = [a + b for a, b in zip(tables[path], units)]
        else:
            tables[path] = units
    return tables


def _head_parts(model: nn.Module, sub: Sublayer) -> tuple[tuple[Part, ...], int, int, int]:
    hd = head_counts(model.config)[2]
    modules = dict(model.named_modules())
    segments = _segments(modules, sub, hd)
    counts = [len(seg) // hd for _, seg in segments]
    q, kv = max(counts, default=0), min(counts, default=0)
    if (
        sub.output is None
        or len(segments) != 3
        or any(len(seg) % hd for _, seg in segments)
        or sorted(counts) != [kv, kv, q]
        or kv == 0
        or q % kv
    ):
        shapes = ", ".join(f"{p}[{len(seg)}]" for p, seg in segments)
        raise UnsupportedModelError(
            f"{sub.path}: cannot map attention heads to its projections (q/k/v parts seen: "
            f"{shapes or 'none'}; head size {hd})"
        )
    qpg = q // kv
    per_unit = [qpg * hd if c == q else hd for c in counts]
    if q == kv:  # one head per group: q, k and v parts alike
        per_unit = [hd] * 3
    tables = _tables(segments, per_unit)
    parts = tuple(Part(path, "out", tuple(map(tuple, t))) for path, t in tables.items())
    cols = tuple(tuple(range(g * qpg * hd, (g + 1) * qpg * hd)) for g in range(kv))
    return (*parts, Part(sub.output, "in", cols)), kv, qpg, hd


def _neuron_parts(modules: dict, sub: Sublayer) -> tuple[tuple[Part, ...], int]:
    if not sub.inputs or sub.output is None:
        raise UnsupportedModelError(f"{sub.path}: cannot find the MLP's in/out projections")
    width = in_features(modules[sub.output])
    segments = _segments(modules, sub, 1)
    if any(len(seg) != width for _, seg in segments):
        sizes = ", ".join(f"{p}[{len(seg)}]" for p, seg in segments)
        raise UnsupportedModelError(
            f"{sub.path}: MLP projections disagree on the hidden width ({sizes} vs "
            f"{sub.output} input {width})"
        )
    tables = _tables(segments, [1] * len(segments))
    parts = tuple(Part(path, "out", tuple(map(tuple, t))) for path, t in tables.items())
    cols = tuple((j,) for j in range(width))
    return (*parts, Part(sub.output, "in", cols)), width


def width_layers(model: nn.Module, structure: ModelStructure, kind: str) -> list[WidthLayer]:
    """One WidthLayer per block for ``kind`` ("head" or "neuron")."""
    modules = dict(model.named_modules())
    kind = Kind(kind)
    out = []
    for b in structure.blocks:
        sub = b.sublayer(kind.sublayer or kind)
        if sub is None:
            raise UnsupportedModelError(f"{b.path}: no {kind} sublayer found")
        if kind is Kind.HEAD:
            parts, size, qpg, hd = _head_parts(model, sub)
        else:
            (parts, size), qpg, hd = _neuron_parts(modules, sub), 1, 1
        out.append(
            WidthLayer(
                kind,
                b.index,
                sub.path,
                parts,
                size,
                _unit_params(modules, parts),
                qpg,
                hd,
                tuple(sub.post_norms),
            )
        )
    return out
