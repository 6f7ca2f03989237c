"""Apply a Plan to a model: remove blocks and residual sublayers for real."""

from __future__ import annotations

import copy

from torch import nn

from depthcut.errors import UnsupportedModelError
from depthcut.graph.structure import ModelStructure, discover_structure, require_sublayer
from depthcut.planning.plan import Plan
from depthcut.surgery.hf import renumber_layer_idx, sync_config
from depthcut.surgery.modules import ZeroBranch, set_module
from depthcut.units.discover import count_params


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


def apply_plan(model: nn.Module, plan: Plan, inplace: bool = False) -> nn.Module:
    """The model with the plan's units physically removed and its config synced."""
    if not inplace:
        model = copy.deepcopy(model)
    structure = discover_structure(model)
    check_plan_fits(model, structure, plan)
    drop = set(plan.removed_blocks)
    for action in plan.actions:
        if action.kind != "block" and action.block not in drop:
            remove_sublayer(model, structure, action.block, action.kind)
    kept = remove_blocks(model, structure, drop)
    if hasattr(model, "config"):
        sync_config(model.config, kept, structure.num_blocks)
    renumber_layer_idx(model.get_submodule(structure.blocks_path))
    return model
