"""Depth surgery: take residual sublayers and whole blocks out of the block stack."""

from __future__ import annotations

from torch import nn

from depthcut.graph.structure import ModelStructure, require_sublayer
from depthcut.surgery.modules import ZeroBranch, set_module
from depthcut.surgery.release import release


def remove_sublayer(model: nn.Module, structure: ModelStructure, block: int, kind: str) -> None:
    sub = require_sublayer(structure.blocks[block], kind)
    layer_idx = block if kind == "attention" else None  # renumbered after block removal
    gone = [model.get_submodule(p) for p in [sub.path, *sub.pre_norms, *sub.post_norms]]
    set_module(model, sub.path, ZeroBranch(kind, sub.out_arity, layer_idx))
    for norm in [*sub.pre_norms, *sub.post_norms]:
        set_module(model, norm, nn.Identity())
    _release(gone)


def remove_blocks(model: nn.Module, structure: ModelStructure, drop: set[int]) -> list[int]:
    blocks = structure.block_list(model)
    kept = [i for i in range(len(blocks)) if i not in drop]
    set_module(model, structure.blocks_path, nn.ModuleList([blocks[i] for i in kept]))
    _release([blocks[i] for i in sorted(drop)])
    return kept


def _release(modules: list[nn.Module]) -> None:
    """The removed modules' memory-mapped weights give their pages back (``release``)."""
    release(t for m in modules for t in [*m.parameters(), *m.buffers()])
