"""Reference semantics of removing a unit, by forward hooks on the unmodified model.

A removed block passes its input through; a removed sublayer's residual branch contributes
zero (its last module, a post-norm where there is one, outputs zeros). Scoring uses this, and
tests compare physical surgery against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from depthcut.graph.capture import first_tensor, hidden_of
from depthcut.graph.structure import ModelStructure, require_sublayer
from depthcut.kinds import Kind
from depthcut.units.discover import Unit


def replace_output(output: Any, tensor: torch.Tensor) -> Any:
    """``output`` with its main tensor replaced, keeping the tuple structure."""
    if isinstance(output, torch.Tensor):
        return tensor
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    if isinstance(output, list):
        return [tensor, *output[1:]]
    raise TypeError(f"cannot replace the main tensor of a {type(output).__name__} output")


def _passthrough(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    given = first_tensor(args, kwargs)
    if given is None:
        raise TypeError(f"{type(module).__name__} was called without a tensor input")
    return replace_output(output, given)


def _zero(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    return replace_output(output, torch.zeros_like(hidden_of(output)))


def hook_target(structure: ModelStructure, unit: Unit) -> tuple[str, str]:
    """(module path, "pass"|"zero") that realises the unit's removal."""
    block = structure.blocks[unit.block]
    if unit.kind is Kind.BLOCK:
        return block.path, "pass"
    sub = require_sublayer(block, unit.kind)
    return (sub.post_norms[-1] if sub.post_norms else sub.path), "zero"


@contextmanager
def bypassed(model: nn.Module, structure: ModelStructure, units: Iterable[Unit]) -> Iterator[None]:
    """Within the context, ``model`` computes as if ``units`` were removed."""
    modules = dict(model.named_modules())
    handles = []
    try:
        for unit in units:
            path, how = hook_target(structure, unit)
            hook = _passthrough if how == "pass" else _zero
            handles.append(modules[path].register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
