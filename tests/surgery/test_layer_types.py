"""Models with per-layer ``layer_types`` (sliding/full attention) stay consistent."""

import torch

import depthcut as dc
from depthcut.graph.structure import discover_structure
from depthcut.units.bypass import bypassed
from support import make_plan
from tiny import tiny_gemma3


def test_gemma3_post_norms_are_coupled():
    s = discover_structure(tiny_gemma3())
    b = s.blocks[1]
    assert b.attention.post_norms == ["model.layers.1.post_attention_layernorm"]
    assert b.mlp.pre_norms == ["model.layers.1.pre_feedforward_layernorm"]
    assert b.mlp.post_norms == ["model.layers.1.post_feedforward_layernorm"]


def test_gemma3_sublayer_and_block_removal_keep_cache_consistent():
    model = tiny_gemma3()
    types = list(model.config.layer_types)
    plan, units, s = make_plan(model, [("block", 2), ("attention", 0), ("mlp", 3)])
    ids = torch.randint(3, 97, (2, 9))
    with torch.no_grad(), bypassed(model, s, units):
        expected = model(input_ids=ids, use_cache=False).logits
    pruned = dc.apply(model, plan)
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=ids, use_cache=False).logits, expected)
    kept = [0, 1, 3, 4, 5]
    assert pruned.config.layer_types == [types[i] for i in kept]
    assert pruned.config.num_hidden_layers == 5
    kw = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
    with torch.no_grad():
        torch.testing.assert_close(
            pruned.generate(ids, use_cache=True, **kw), pruned.generate(ids, use_cache=False, **kw)
        )
