"""An explicit linear patch on the residual stream (``--repair patch``, LinearPatch).

A removed run of blocks leaves the stream entering the next kept module with other channel
magnitudes than the dense model's. LinearPatch multiplies that stream by a d × d matrix P = H D
Hᵀ there. P acts on the residual stream itself, which every later block also carries forward
through its skip connection, so it cannot be folded into a kept weight: it stays an explicit
module, ``linear_patch``, a child of the module that writes the stream entering the run (the
last kept block before it, or the token embedding when the run starts the stack), applied by a
forward hook to that module's output. Its parameters count in the model (and are excluded when a
plan checks that it fits the model it was made for). Paths are recorded in the plan in the
original numbering; ``insert_patches`` puts identity patches there before blocks leave the
stack, and the saved weights fill them on load."""

from __future__ import annotations

import torch
from torch import nn

PATCH = "linear_patch"


class StreamPatch(nn.Module):
    """x ↦ x P on the last dimension (P starts as the identity)."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]} × {self.weight.shape[1]}, on the residual stream"


def _patch_output(module: nn.Module, args: tuple, output):
    """Forward hook: the host's main output (a tensor, or a tuple's first) times its patch."""
    patch = getattr(module, PATCH)
    if isinstance(output, torch.Tensor):
        return patch(output)
    return (patch(output[0]), *output[1:])


def insert_patch(model: nn.Module, host: str, width: int) -> StreamPatch:
    """The patch of module ``host`` (an identity one is added when it has none)."""
    module = model.get_submodule(host)
    if not isinstance(getattr(module, PATCH, None), StreamPatch):
        setattr(module, PATCH, StreamPatch(width))
        module.register_forward_hook(_patch_output)
    patch = getattr(module, PATCH)
    ref = next(model.parameters())
    return patch.to(device=ref.device, dtype=ref.dtype)


def recorded_patches(run: dict) -> list[dict]:
    """The patches a plan's ``run`` record holds (``--repair patch``; empty otherwise)."""
    return run.get("repair", {}).get("patches", [])


def insert_patches(model: nn.Module, patches: list[dict]) -> None:
    """Identity patches at the recorded ``{"host": path, "width": d}`` (original numbering)."""
    for patch in patches:
        insert_patch(model, patch["host"], patch["width"])


def patch_params(model: nn.Module) -> int:
    """Parameters of the model's stream patches."""
    patches = [m for m in model.modules() if isinstance(m, StreamPatch)]
    return sum(p.numel() for m in patches for p in m.parameters())
