"""Config and cache-index bookkeeping after block removal."""

from transformers import Gemma3TextConfig, LlamaConfig

from depthcut.surgery.hf import per_layer_keys, renumber_layer_idx, sync_config
from tiny import tiny_llama


def test_per_layer_lists_are_found_and_filtered():
    cfg = Gemma3TextConfig(num_hidden_layers=6, sliding_window_pattern=2, head_dim=8)
    assert "layer_types" in per_layer_keys(cfg, 6)
    types = list(cfg.layer_types)
    sync_config(cfg, [0, 2, 3, 5], 6)
    assert cfg.num_hidden_layers == 4
    assert cfg.layer_types == [types[0], types[2], types[3], types[5]]


def test_lists_of_another_length_are_left_alone():
    cfg = LlamaConfig(num_hidden_layers=4, architectures=["A", "B", "C", "D"])
    assert per_layer_keys(cfg, 4) == []  # architectures is never per layer
    sync_config(cfg, [1, 3], 4)
    assert cfg.num_hidden_layers == 2 and cfg.architectures == ["A", "B", "C", "D"]


def test_layer_idx_becomes_the_new_block_index():
    model = tiny_llama(layers=5)
    blocks = model.model.layers
    del blocks[1]
    renumber_layer_idx(blocks)
    assert [b.self_attn.layer_idx for b in blocks] == [0, 1, 2, 3]
