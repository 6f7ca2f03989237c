"""LoRA through peft on every transform of the block stack (found from the traced model,
not from module names), merged back into plain weights before saving."""

from __future__ import annotations

import warnings

from torch import nn

from depthcut.errors import UnsupportedModelError
from depthcut.graph.structure import discover_structure
from depthcut.hftypes import HFModel
from depthcut.ops import is_transform
from depthcut.quantization import quiet_torchao
from depthcut.recovery.config import RecoverConfig


def lora_targets(model: nn.Module) -> list[str]:
    """Full names of the Linear / GPT-2 Conv1D modules inside the block stack."""
    prefix = discover_structure(model).blocks_path + "."
    names = [
        name
        for name, module in model.named_modules()
        if name.startswith(prefix) and is_transform(module)
    ]
    if not names:
        raise UnsupportedModelError(f"no Linear/Conv1D layers under {prefix[:-1]} for LoRA")
    return names


def add_lora(model: nn.Module, cfg: RecoverConfig) -> nn.Module:
    """``model`` wrapped by peft with trainable adapters; the base weights frozen."""
    from depthcut.extras import require

    require("peft")
    quiet_torchao()
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_targets(model),
        bias="none",
    )
    with warnings.catch_warnings():  # peft asks transformers a name deprecated in v6
        warnings.filterwarnings("ignore", category=FutureWarning)
        return get_peft_model(model, config)


def merge_lora(peft_model: HFModel) -> nn.Module:
    """Fold the adapters into the base weights: an ordinary model with the same outputs."""
    return peft_model.merge_and_unload()
