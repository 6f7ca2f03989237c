"""Parameter-free stand-ins left where a residual sublayer was removed."""

from __future__ import annotations

import torch
from torch import nn

from depthcut.graph.capture import first_tensor


class ZeroBranch(nn.Module):
    """A removed residual branch: returns zeros shaped like its input, in the original's
    output structure (a tensor, or a tuple padded with ``None``), and touches no KV cache."""

    def __init__(self, kind: str, arity: int | None = None):
        super().__init__()
        self.kind = kind
        self.arity = arity

    def forward(self, *args, **kwargs):
        zeros = torch.zeros_like(first_tensor(args, kwargs))
        if self.arity is None:
            return zeros
        return (zeros, *([None] * (self.arity - 1)))

    def extra_repr(self) -> str:
        return f"removed {self.kind}"


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)
