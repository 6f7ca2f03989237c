"""Pure tensor slicing of transformation modules (nn.Linear and GPT-2 style Conv1D)."""

from __future__ import annotations

import torch
from torch import nn

from depthcut.hftypes import LinearLike
from depthcut.ops import out_axis
from depthcut.surgery.release import release


def _set(module: LinearLike, name: str, tensor: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(tensor.contiguous(), old.requires_grad))
    release([old])  # a memory-mapped original's pages would stay resident beside the slice


def slice_out(module: LinearLike, keep: torch.Tensor) -> None:
    """Keep only output features ``keep`` (weight rows/cols and bias)."""
    axis = out_axis(module)
    _set(module, "weight", module.weight.detach().index_select(axis, keep))
    if getattr(module, "bias", None) is not None:
        _set(module, "bias", module.bias.detach().index_select(0, keep))
    _sync_sizes(module)


def slice_in(module: LinearLike, keep: torch.Tensor) -> None:
    """Keep only input features ``keep``."""
    axis = 1 - out_axis(module)
    _set(module, "weight", module.weight.detach().index_select(axis, keep))
    _sync_sizes(module)


def _sync_sizes(module: LinearLike) -> None:
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    else:
        module.nx, module.nf = module.weight.shape
