"""Names of saved tensors: transformers' legacy key renames, and tied weights (saved once)."""

from __future__ import annotations

import re

from torch import nn

from depthcut.hftypes import HFModel


def checkpoint_to_model_keys(model: HFModel, state: dict) -> dict:
    """Undo the legacy key renames that ``save_pretrained`` applies (e.g. GPT-NeoX
    ``lm_head`` is saved as ``embed_out``), using transformers' own rename table."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    wanted = set(model.state_dict())
    renames = [
        (src, dst)
        for rule in get_model_conversion_mapping(model)
        if isinstance(rule, WeightRenaming)
        for src, dst in zip(rule.source_patterns, rule.target_patterns)
    ]
    out = {}
    for key, value in state.items():
        if key not in wanted:
            key = next((k for s, d in renames if (k := re.sub(s, d, key)) in wanted), key)
        out[key] = value
    return out


def tied_keys(model: nn.Module) -> set[str]:
    """State-dict keys that share storage with another key (saved once)."""
    seen: dict[int, str] = {}
    tied: set[str] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.add(name)
            tied.add(seen[id(tensor)])
        seen[id(tensor)] = name
    return tied
