"""Iterative width pruning: k steps of (prune a slice → re-score the pruned model).

Step s removes units until s/k of the requested fraction is gone, choosing among units still
present by scores measured on the model pruned by steps 1..s-1. Indices are kept in the
original model's numbering, so the result is one ordinary plan.
"""

from __future__ import annotations

import copy

from tqdm.auto import tqdm

from depthcut.config import PruneConfig
from depthcut.graph.structure import discover_structure
from depthcut.kinds import Kind, UnitRef
from depthcut.methods.width.importance import width_scores
from depthcut.methods.width.layers import width_layers
from depthcut.methods.width.select import select_width
from depthcut.planning.plan import Action

REMOVED = float("-inf")  # already-removed units count toward the cumulative target first


def _pruned_copy(model, removal: dict[str, dict[str, list[int]]]):
    from depthcut.methods.width.surgery import apply_width_actions

    current = copy.deepcopy(model)
    actions = [
        Action(Kind(kind), UnitRef.parse(lid).block, "", 0, members=tuple(units))
        for kind, layers in removal.items()
        for lid, units in layers.items()
    ]
    apply_width_actions(current, discover_structure(current), actions)
    return current


def _to_original(values: list[float], size: int, removed: list[int]) -> list[float]:
    """Scores of the pruned layer's units, placed at their original indices."""
    alive = [u for u in range(size) if u not in set(removed)]
    out = [REMOVED] * size
    for now, orig in enumerate(alive):
        out[orig] = values[now]
    return out


def iterative_width(model, cfg: PruneConfig, calib, infos: dict, progress: bool = True):
    """({kind: {layer id: removed original units}}, per-step removal history)."""
    removal: dict[str, dict[str, list[int]]] = {kind: {} for kind in cfg.width_units}
    history = []
    n_blocks = discover_structure(model).num_blocks
    for step in tqdm(range(1, cfg.width_steps + 1), desc="width steps", disable=not progress):
        current = _pruned_copy(model, removal) if step > 1 else model
        structure = discover_structure(current)
        for kind in cfg.width_units:
            layers = width_layers(current, structure, kind)
            now = width_scores(current, layers, calib, cfg.width_importance, cfg.tau, False)
            done = removal[kind]
            mapped = {
                lid: _to_original(now[lid], infos[kind][lid]["size"], done.get(lid, []))
                for lid in now
            }
            fraction = cfg.width_fraction(kind) * step / cfg.width_steps
            removal[kind] = select_width(
                infos[kind],
                mapped,
                fraction,
                n_blocks,
                (cfg.protect_first, cfg.protect_last),
                cfg.min_heads if kind == "head" else 1,
                cfg.round_to if kind == "neuron" else 1,
                scope=cfg.width_scope,
            )
        history.append({k: {lid: list(u) for lid, u in v.items()} for k, v in removal.items()})
    return removal, history
