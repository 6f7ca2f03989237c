"""Width surgery: slice the chosen heads / neurons out of every projection that owns them,
check that the attentions still run, and say uniform widths in the config."""

from __future__ import annotations

import torch
from torch import nn

from depthcut.errors import UnsupportedModelError
from depthcut.graph.structure import ModelStructure, probe_inputs
from depthcut.kinds import Kind
from depthcut.methods.width.apply import prune_width
from depthcut.methods.width.layers import HEAD_ATTRS, width_layers

NEURON_KEYS = ("intermediate_size", "n_inner")


def layers_of(model: nn.Module, structure: ModelStructure, actions: list) -> dict:
    """{unit id: WidthLayer} of every kind the width ``actions`` name."""
    layers = {}
    for kind in sorted({a.kind for a in actions}):
        layers.update({w.id: w for w in width_layers(model, structure, kind)})
    return layers


def apply_width_actions(
    model: nn.Module, structure: ModelStructure, actions: list, drop: frozenset = frozenset()
) -> None:
    """Slice the width actions' units out; ``drop``: blocks the plan removes whole."""
    layers = layers_of(model, structure, actions)
    for action in actions:
        prune_width(model, layers[action.unit_id], list(action.members))
    if any(a.kind is Kind.HEAD for a in actions):
        check_heads_run(model)
    if actions and hasattr(model, "config"):
        sync_uniform_width(model.config, layers, actions, drop)


def check_heads_run(model: nn.Module) -> None:
    """After head pruning the attentions must still run: the graph shows the sliced rows but
    not where an attention keeps its head counts (``width.layers.HEAD_ATTRS``)."""
    try:
        with torch.no_grad():
            model(**probe_inputs(model))
    except (RuntimeError, ValueError) as err:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise UnsupportedModelError(
            f"{model_type}: attention fails after head pruning ({str(err).splitlines()[0][:120]});"
            f" its head-count attributes are not in depthcut.methods.width.layers.HEAD_ATTRS "
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
