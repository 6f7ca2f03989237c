"""Realise a fine-grained state on real modules: slice widths, stand-ins, folds.

The graph root (a block, or a whole CNN) is edited in place from its *original* weights:
concat folds first (on original columns), then every kept module node is sliced to the alive
labels of its spaces, then pruned units and removed activations/norms become identities and
patched modules become constant stand-ins. No masks are left: tensors really shrink.
"""

from __future__ import annotations

import math
from collections.abc import Set as AbstractSet
from typing import Any

import torch
from torch import nn

from depthcut.graph.nodes import FNode
from depthcut.methods.fine.patch import Patch, dropped_labels, patches_of
from depthcut.methods.fine.state import PRUNABLE_NODES, FineState, param_dims
from depthcut.ops import is_conv1d
from depthcut.surgery.modules import PatchBranch, set_module

SIZE_ATTRS = {
    "in": ("in_features", "in_channels", "nx"),
    "out": ("out_features", "out_channels", "nf"),
}


def _kept(state: FineState, root: tuple | None, drop: AbstractSet[int]) -> list[int] | None:
    if root is None:
        return None
    labels = [lab for lab in state.alive_of(root) if lab not in drop]
    return None if len(labels) == state.g.sizes[root] else labels


def _axis_labels(dims: list, state: FineState, drop: AbstractSet[int], node: FNode) -> list:
    """Per tensor axis: the labels it keeps, or None when it keeps them all. ``drop`` (the
    concat-folded copies) applies to a transform's input axis only."""
    in_root = state.root(node.extra["in"]) if node.kind == "transform" else None
    return [_kept(state, root, drop if root == in_root else set()) for root in dims]


def _slice_tensor(t: torch.Tensor, dims: list, state: FineState, drop: set[int], node: FNode):
    for axis, labels in enumerate(_axis_labels(dims, state, drop, node)):
        if labels is not None:
            t = t.index_select(axis, torch.tensor(labels, dtype=torch.long, device=t.device))
    return t


def slice_module(state: FineState, node: FNode, module: nn.Module, drop: set[int]) -> None:
    """Shrink the parameters/buffers of one kept module node to its alive labels."""
    with torch.no_grad():
        for name, p in list(module.named_parameters(recurse=False)):
            dims = param_dims(state.g, node, name, p, module)
            new = _slice_tensor(p.data, dims, state, drop, node)
            if new.shape != p.shape:
                setattr(module, name, nn.Parameter(new.contiguous(), p.requires_grad))
        for name, b in list(module.named_buffers(recurse=False)):
            if b is not None and b.dim() == 1 and node.kind == "norm":
                dims = [state.g.space(node.name, node.extra.get("cdim", -1))]
                module._buffers[name] = _slice_tensor(b, dims, state, drop, node).contiguous()
    _sync_sizes(module, node)


def _sync_sizes(module: nn.Module, node: FNode) -> None:
    w = getattr(module, "weight", None)
    if w is None:
        return
    if node.kind == "transform":
        conv1d = is_conv1d(module)
        sizes = {
            "out": w.shape[1] if conv1d else w.shape[0],
            "in": w.shape[0] if conv1d else w.shape[1],
        }
        if isinstance(module, nn.modules.conv._ConvNd):
            sizes["in"] = w.shape[1] * module.groups
        for side, attrs in SIZE_ATTRS.items():
            for attr in attrs:
                if hasattr(module, attr):
                    setattr(module, attr, sizes[side])
    elif node.kind == "norm" and w.dim() == 1:
        norm: Any = module  # LayerNorm or a BatchNorm: the attributes are checked
        if hasattr(norm, "normalized_shape"):
            norm.normalized_shape = (w.shape[0],)
        if hasattr(module, "num_features"):
            module.num_features = w.shape[0]


def fold(root: nn.Module, patches: list[Patch]) -> None:
    """Add the weight columns of dropped concat copies onto the kept copy's columns."""
    with torch.no_grad():
        for patch in patches:
            for consumer, keep, drop in patch.folds:
                module = root.get_submodule(consumer)
                axis = 0 if is_conv1d(module) else 1
                w = module.get_parameter("weight")
                w.index_add_(axis, torch.tensor([keep]), w.index_select(axis, torch.tensor([drop])))


def stand_in(state: FineState, node: FNode, root: nn.Module) -> nn.Module:
    module = root.get_submodule(node.path)
    if node.kind == "attention":
        arity = state.g.arity.get(node.path)
        return PatchBranch("attention", arity, getattr(module, "layer_idx", None), fill="pass")
    return nn.Identity()


def materialize(state: FineState, root: nn.Module) -> nn.Module:
    """Edit ``root`` (holding original weights) so it computes the state; returns it."""
    patches = patches_of(state)
    fold(root, patches)
    drops = dropped_labels(state.g, patches)
    gone = set(state.pruned) | state.removed
    for node in state.g.module_nodes((*PRUNABLE_NODES, "norm", "act")):
        if node.name not in gone:
            slice_module(state, node, root.get_submodule(node.path), drops.get(node.path, set()))
    replace = {n.path: stand_in(state, n, root) for n in (state.g.nodes[g] for g in gone)}
    for patch in patches:
        old = root.get_submodule(patch.module)
        arity = state.g.arity.get(patch.module)
        layer_idx = getattr(old, "layer_idx", None)
        replace[patch.module] = PatchBranch("patched", arity, layer_idx, patch.fill, patch.dim)
    for path in sorted(replace, key=lambda p: -p.count(".")):
        if _inside_other(path, replace):
            continue
        set_module(root, path, replace[path])
    return root


def _inside_other(path: str, replace: dict) -> bool:
    return any(path.startswith(other + ".") for other in replace)


def state_params(state: FineState, root: nn.Module) -> int:
    """Parameters ``root`` would have after :func:`materialize` (symbolic, no copy)."""
    patches = patches_of(state)
    drops = dropped_labels(state.g, patches)
    gone = set(state.pruned) | state.removed
    const = {p.module for p in patches}
    total = sum(p.numel() for p in root.parameters())
    for node in state.g.module_nodes((*PRUNABLE_NODES, "norm", "act")):
        module = root.get_submodule(node.path)
        full = sum(p.numel() for p in module.parameters())
        if node.name in gone or any(node.path == c or node.path.startswith(c + ".") for c in const):
            total -= full
            continue
        total -= full - kept_numel(state, node, module, drops.get(node.path, set()))
    return total


def kept_numel(
    state: FineState, node: FNode, module: nn.Module, drop: AbstractSet[int] = frozenset()
) -> int:
    """Parameters a kept module node has after slicing to its alive labels."""
    n = 0
    for name, p in module.named_parameters():
        dims = param_dims(state.g, node, name, p, module)
        labels = _axis_labels(dims, state, drop, node)
        n += math.prod(s if k is None else len(k) for s, k in zip(p.shape, labels))
    return n


def refit_blocker(state: FineState, node: FNode) -> str | None:
    """Why a kept module node's weights cannot be refit and written back (None when they can):
    it is pruned, replaced by a constant stand-in, or takes folded concat columns."""
    if node.name in state.pruned or node.name in state.removed:
        return "pruned"
    patches = patches_of(state)
    if any(p.module == node.path or node.path.startswith(p.module + ".") for p in patches):
        return "replaced by a constant"
    if node.module in dropped_labels(state.g, patches):
        return "takes folded concat columns"
    return None


def sliced_positions(state: FineState, node: FNode, module: nn.Module, name: str) -> torch.Tensor:
    """For each element :func:`materialize` keeps of parameter ``name`` of a kept module node
    (in the sliced shape), its flat position in the original parameter."""
    p = getattr(module, name)
    index = torch.arange(p.numel(), device=p.device).view(p.shape)
    return _slice_tensor(index, param_dims(state.g, node, name, p, module), state, set(), node)
