"""Keep a Hugging Face config and the cache indices consistent after depth surgery.

Knowledge here is data: the config key of the layer count (``num_hidden_layers`` works for all
supported configs through their ``attribute_map``), per-layer lists (any list-valued config
attribute as long as the block stack), and ``layer_idx`` attributes of submodules.
"""

from __future__ import annotations

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


def sync_config(config, kept: list[int], num_blocks: int, attention_blocks: list[int]) -> None:
    """Drop removed blocks from the layer count and every per-layer list.

    ``attention_blocks`` are the new indices of blocks that still have attention. Cache
    indices are assigned to those in order; a ``layer_types`` list is re-ordered to match
    (attention blocks first) so that the KV cache built from the config lines up.
    """
    for key in per_layer_keys(config, num_blocks):
        values = getattr(config, key)
        new = [values[i] for i in kept]
        if key == "layer_types" and len(attention_blocks) < len(kept):
            rest = [i for i in range(len(kept)) if i not in attention_blocks]
            new = [new[i] for i in attention_blocks] + [new[i] for i in rest]
        setattr(config, key, new)
    setattr(config, LAYER_COUNT_KEY, len(kept))


def renumber_layer_idx(blocks: nn.ModuleList, attention_blocks: list[int]) -> None:
    """Give every attention its cache index: its rank among blocks that keep attention."""
    rank = {block: n for n, block in enumerate(attention_blocks)}
    for j, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = rank.get(j, j)
