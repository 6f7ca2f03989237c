"""Apply a Plan to a model: remove blocks and residual sublayers for real."""

from __future__ import annotations

import torch
from torch import nn

from depthcut.errors import UnsupportedModelError
from depthcut.graph.structure import (
    ModelStructure,
    probe_inputs,
    require_sublayer,
)
from depthcut.kinds import Kind
from depthcut.planning.plan import Plan
from depthcut.surgery.modules import ZeroBranch, set_module
from depthcut.units.discover import count_params

NEURON_KEYS = ("intermediate_size", "n_inner")


def check_plan_fits(model: nn.Module, structure: ModelStructure, plan: Plan) -> None:
    n, total = structure.num_blocks, count_params(model)
    if n != plan.model["num_blocks"] or total != plan.model["params_all"]:
        raise UnsupportedModelError(
            f"plan was made for a model with {plan.model['num_blocks']} blocks and "
            f"{plan.model['params_all']:,} params; this one has {n} blocks and {total:,}"
        )


def remove_sublayer(model: nn.Module, structure: ModelStructure, block: int, kind: str) -> None:
    sub = require_sublayer(structure.blocks[block], kind)
    layer_idx = block if kind == "attention" else None  # renumbered after block removal
    set_module(model, sub.path, ZeroBranch(kind, sub.out_arity, layer_idx))
    for norm in [*sub.pre_norms, *sub.post_norms]:
        set_module(model, norm, nn.Identity())


def remove_blocks(model: nn.Module, structure: ModelStructure, drop: set[int]) -> list[int]:
    blocks = model.get_submodule(structure.blocks_path)
    kept = [i for i in range(len(blocks)) if i not in drop]
    set_module(model, structure.blocks_path, nn.ModuleList([blocks[i] for i in kept]))
    return kept


def apply_width_actions(
    model: nn.Module, structure: ModelStructure, actions: list, drop: frozenset = frozenset()
) -> None:
    """Slice the width actions' units out; ``drop``: blocks the plan removes whole."""
    from depthcut.width.apply import prune_width
    from depthcut.width.layers import width_layers

    layers = {}
    for kind in sorted({a.kind for a in actions}):
        layers.update({w.id: w for w in width_layers(model, structure, kind)})
    for action in actions:
        prune_width(model, layers[action.unit_id], list(action.members))
    if any(a.kind is Kind.HEAD for a in actions):
        check_heads_run(model)
    if actions and hasattr(model, "config"):
        sync_uniform_width(model.config, layers, actions, drop)


def check_heads_run(model: nn.Module) -> None:
    """After head pruning the attentions must still run: the graph shows the sliced rows but
    not where an attention keeps its head counts (``width.layers.HEAD_ATTRS``)."""
    from depthcut.width.layers import HEAD_ATTRS

    try:
        with torch.no_grad():
            model(**probe_inputs(model))
    except (RuntimeError, ValueError) as err:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise UnsupportedModelError(
            f"{model_type}: attention fails after head pruning ({str(err).splitlines()[0][:120]});"
            f" its head-count attributes are not in depthcut.width.layers.HEAD_ATTRS "
            f"(known: {', '.join(HEAD_ATTRS)})"
        ) from None


def sync_uniform_width(config, layers: dict, actions: list, drop: frozenset = frozenset()) -> None:
    """When every kept layer of a kind keeps the same width, say so in the config too (so that
    plain ``from_pretrained`` rebuilds it); heterogeneous sizes live in the plan."""
    for kind, keys in ((Kind.NEURON, NEURON_KEYS), (Kind.HEAD, ())):
        kept = {lid: w.size for lid, w in layers.items() if w.kind is kind and w.block not in drop}
        for a in actions:
            if a.kind is kind:
                kept[a.unit_id] -= len(a.members)
        if len(set(kept.values())) != 1:
            continue
        (value,) = set(kept.values())
        if kind is Kind.NEURON:
            for key in keys:  # GPT-2's n_inner is None (4 × n_embd) until set
                if hasattr(config, key):
                    setattr(config, key, value)
        elif getattr(config, "num_key_value_heads", None) is not None:
            w = next(w for w in layers.values() if w.kind is Kind.HEAD)
            config.head_dim = w.head_dim
            config.num_key_value_heads = value
            config.num_attention_heads = value * w.q_heads_per_unit
