"""The nn facts every layer of depthcut needs, in one leaf module (imports nothing of
depthcut): which modules are 2-D transformations and how their weights are oriented, and the
op names that mark attention, norms and transformations in a trace."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

# op names (torch functions while tracing calls, ATen ops in an exported graph)
ATTENTION_OPS = frozenset({"scaled_dot_product_attention", "softmax", "_softmax"})
NORM_OPS = frozenset({"layer_norm", "rms_norm", "rsqrt", "group_norm"})
TRANSFORM_OPS = frozenset(
    {"linear", "conv1d", "conv2d", "conv3d", "addmm", "matmul", "mm", "convolution"}
)


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2 style ``Conv1D``: a Linear with its weight stored [in, out] (it has ``nf``)."""
    weight = getattr(module, "weight", None)
    return hasattr(module, "nf") and isinstance(weight, torch.Tensor) and weight.dim() == 2


def is_transform(module: nn.Module) -> bool:
    """A 2-D weight matmul: ``nn.Linear`` ([out, in]) or a ``Conv1D`` ([in, out])."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def out_axis(module: nn.Module) -> int:
    """The weight axis of a transformation's output features."""
    return 0 if isinstance(module, nn.Linear) else 1


def weight_of(module: nn.Module) -> torch.Tensor:
    """The ``weight`` of a transformation, norm or embedding (torch types a module attribute
    as ``Tensor | Module``)."""
    return cast(torch.Tensor, module.weight)


def out_features(module: nn.Module) -> int:
    """Output features of a transformation (``Linear`` or ``Conv1D``)."""
    return weight_of(module).shape[out_axis(module)]


def in_features(module: nn.Module) -> int:
    """Input features of a transformation (``Linear`` or ``Conv1D``)."""
    return weight_of(module).shape[1 - out_axis(module)]
