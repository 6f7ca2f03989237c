"""``depthcut inspect``: what depthcut sees in a model."""

from __future__ import annotations

from collections import Counter

from torch import nn

from depthcut.graph.structure import discover_structure
from depthcut.kinds import DEPTH_KINDS, Kind
from depthcut.units.discover import count_params, discover_units, embedding_params


def inspect_text(model: nn.Module) -> str:
    structure = discover_structure(model)
    total = count_params(model)
    emb = embedding_params(model, structure)
    kinds = tuple(k for k in DEPTH_KINDS if _has(structure, k))
    units = discover_units(model, structure, kinds)
    counts = Counter(u.kind for u in units)
    first = structure.blocks[0]
    lines = [
        f"model: {type(model).__name__} ({getattr(model.config, 'model_type', '?')})",
        f"params: {total:,} all, {total - emb:,} non-embedding ({emb:,} embedding/head)",
        f"blocks: {structure.num_blocks} at {structure.blocks_path}; tail: {structure.tail}",
        "units: " + ", ".join(f"{counts[Kind(k)]} {k}" for k in kinds),
        _width_line(model, structure),
        f"block 0: attention {first.attention.modules if first.attention else None}",
        f"         mlp {first.mlp.modules if first.mlp else None}",
        f"{'unit':<14} {'module':<36} {'params':>12}",
    ]
    lines += [f"{u.id:<14} {u.path:<36} {u.params:>12,}" for u in units if u.block == 0]
    return "\n".join(lines) + "\n" + _fine_text(model)


def _fine_text(model: nn.Module) -> str:
    from depthcut.errors import DepthcutError

    try:
        return search_space_text(model)
    except DepthcutError as err:
        return f"fine-grained: not available ({err})"


def _has(structure, kind: str) -> bool:
    subs = [b.sublayer(kind) for b in structure.blocks]
    return kind == "block" or all(s is not None and s.residual for s in subs)


def _width_line(model, structure) -> str:
    from depthcut.errors import DepthcutError
    from depthcut.methods.width.layers import width_layers

    parts = []
    for kind, label in (("head", "head units (KV groups)"), ("neuron", "MLP neurons")):
        try:
            layers = width_layers(model, structure, kind)
        except DepthcutError as err:
            parts.append(f"{kind}: not available ({err})")
            continue
        parts.append(f"{sum(w.size for w in layers)} {label}")
    return "width: " + ", ".join(parts)


def search_space_text(model: nn.Module, example=None) -> str:
    """The fine-grained search space vs coarse ones (thesis Tables 4.2 / 4.4)."""
    from depthcut.methods.fine.model import FineModel

    fm = FineModel(model, example)
    local = fm.local_units(include_excluded=True)
    kept = [u for u in local if u.reason is None]
    n = len(fm.roots)
    g = fm.graph
    same = [u for u in kept if _widths(g, u)[0] == _widths(g, u)[1]]
    counts = Counter(str(u.op) for u in kept)
    lines = ["fine-grained search space:"]
    if example is None:
        lines.append(
            f"  blocks {n} | sublayers {2 * n} | fine units {n * len(kept)} "
            f"({', '.join(f'{n * c} {k}' for k, c in sorted(counts.items()))})"
        )
        lines.append("  per block: " + ", ".join(f"{u.module} ({u.op})" for u in kept))
    else:
        extra = len(kept) - len(same)
        gain = f"+{extra / len(same):.0%}" if same else f"+{extra}, coarse finds none"
        lines.append(
            f"  layers {len(local)} | width-preserving (coarse-prunable) {len(same)} | "
            f"fine units {len(kept)} ({gain}: channel-changing layers made prunable)"
        )
    for u in local:
        if u.reason:
            lines.append(f"  excluded {u.module}: {u.reason}")
    return "\n".join(lines)


def _widths(graph, unit) -> tuple[int, int]:
    node = graph.nodes[unit.node]
    return graph.sizes[graph.spaces.find(node.extra["in"])], graph.sizes[
        graph.spaces.find(node.extra["out"])
    ]
