"""Keep a Hugging Face config and the cache indices consistent after depth surgery.

Knowledge here is data: the config key of the layer count (``num_hidden_layers`` works for all
supported configs through their ``attribute_map``), per-layer lists (any list-valued config
attribute as long as the block stack), and ``layer_idx`` attributes of submodules.
"""

from __future__ import annotations

from typing import Any

from torch import nn

LAYER_COUNT_KEY = "num_hidden_layers"
NOT_PER_LAYER = {"architectures", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens"}


def per_layer_keys(config, num_blocks: int) -> list[str]:
    """Config attributes holding one entry per block."""
    keys = []
    for key, value in config.to_dict().items():
        if key in NOT_PER_LAYER or not isinstance(value, list):
            continue
        if len(value) == num_blocks:
            keys.append(key)
    return keys


def sync_config(config, kept: list[int], num_blocks: int) -> None:
    """Drop removed blocks from the layer count and every per-layer list."""
    for key in per_layer_keys(config, num_blocks):
        values = getattr(config, key)
        setattr(config, key, [values[i] for i in kept])
    setattr(config, LAYER_COUNT_KEY, len(kept))


def renumber_layer_idx(blocks: nn.ModuleList) -> None:
    """Every ``layer_idx`` in block j becomes j (KV-cache slot = new block index)."""
    for j, block in enumerate(blocks):
        module: Any
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = j
