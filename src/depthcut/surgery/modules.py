"""Parameter-free stand-ins left where a residual sublayer was removed."""

from __future__ import annotations

import torch
from torch import nn

from depthcut.graph.capture import first_tensor

CACHE_KWARGS = ("past_key_values", "layer_past", "past_key_value")


class ZeroBranch(nn.Module):
    """A removed residual branch: returns zeros shaped like its input, in the original's
    output structure (a tensor, or a tuple padded with ``None``).

    A removed attention keeps only the position bookkeeping of its KV-cache slot: it appends
    1×1 placeholder keys/values (B·T floats instead of B·heads·T·head_dim), so that cache
    lengths, sliding-window masks and ``layer_idx``-indexed configs stay consistent.
    """

    def __init__(self, kind: str, arity: int | None = None, layer_idx: int | None = None):
        super().__init__()
        self.kind = kind
        self.arity = arity
        self.layer_idx = layer_idx

    def forward(self, *args, **kwargs):
        hidden = first_tensor(args, kwargs)
        cache = next((kwargs[k] for k in CACHE_KWARGS if kwargs.get(k) is not None), None)
        if self.layer_idx is not None and hasattr(cache, "update"):
            stub = hidden.new_zeros(hidden.shape[0], 1, hidden.shape[1], 1)
            cache.update(stub, stub, self.layer_idx)
        zeros = torch.zeros_like(hidden)
        if self.arity is None:
            return zeros
        return (zeros, *([None] * (self.arity - 1)))

    def extra_repr(self) -> str:
        return f"removed {self.kind}"


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


class PatchBranch(ZeroBranch):
    """A fine-grained stand-in: ``fill`` is "zero" (x + x → x + 0), "one" (x ⊙ x → x ⊙ 1),
    "pass" (a pruned attention region is identity) or "empty" (a dropped concat copy: a
    zero-width tensor along ``dim``)."""

    def __init__(self, kind, arity=None, layer_idx=None, fill: str = "zero", dim: int = -1):
        super().__init__(kind, arity, layer_idx)
        self.fill = fill
        self.dim = dim

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)  # keeps the KV-cache bookkeeping
        hidden = first_tensor(args, kwargs)
        if self.fill == "one":
            value = torch.ones_like(hidden)
        elif self.fill == "pass":
            value = hidden
        elif self.fill == "empty":
            value = hidden.narrow(self.dim, 0, 0)
        else:
            return out
        return value if self.arity is None else (value, *out[1:])

    def extra_repr(self) -> str:
        return f"{self.kind}: {self.fill}"
