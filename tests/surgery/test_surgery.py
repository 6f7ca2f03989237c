import pytest
import torch

import depthcut as dc
from depthcut.graph.structure import probe_inputs
from depthcut.units.bypass import bypassed
from depthcut.units.discover import count_params
from support import make_plan
from tiny import BUILDERS, tiny_llama

CASES = {
    "block": [("block", 2)],
    "attention": [("attention", 1), ("attention", 3)],
    "mlp": [("mlp", 0), ("mlp", 4)],
    "mixed": [("block", 1), ("attention", 3), ("mlp", 4), ("attention", 0)],
}


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_physical_removal_equals_bypass_reference(arch, case):
    model = BUILDERS[arch](layers=6)
    plan, units, structure = make_plan(model, CASES[case])
    ids = torch.randint(3, 97, (2, 11))
    with torch.no_grad(), bypassed(model, structure, units):
        expected = model(input_ids=ids, use_cache=False).logits
    pruned = dc.apply(model, plan)
    with torch.no_grad():
        got = pruned(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, expected)
    assert count_params(pruned) == count_params(model) - sum(u.params for u in units)
    assert len(pruned.state_dict()) < len(model.state_dict())
    n_blocks = 6 - sum(1 for u in units if u.kind == "block")
    assert pruned.config.num_hidden_layers == n_blocks


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_generate_with_cache_equals_without_after_block_and_attention_removal(arch):
    model = BUILDERS[arch](layers=6)
    plan, _, _ = make_plan(model, [("block", 2), ("attention", 0), ("attention", 4)])
    pruned = dc.apply(model, plan)
    ids = torch.randint(3, 97, (2, 5))
    kw = {"max_new_tokens": 10, "min_new_tokens": 10, "do_sample": False}
    with torch.no_grad():
        cached = pruned.generate(ids, use_cache=True, **kw)
        naive = pruned.generate(ids, use_cache=False, **kw)
    assert cached.shape == (2, 15)
    torch.testing.assert_close(cached, naive)


def test_layer_idx_renumbered_for_cache():
    model = tiny_llama(layers=6)
    plan, _, _ = make_plan(model, [("block", 1), ("attention", 3)])
    pruned = dc.apply(model, plan)
    idx = [layer.self_attn.layer_idx for layer in pruned.model.layers]
    # blocks 0,2,3,4,5 remain as 0..4; block 3 (new index 2) lost its attention
    assert idx == [0, 1, 2, 3, 4]
    assert type(pruned.model.layers[2].self_attn).__name__ == "ZeroBranch"


def test_apply_refuses_a_plan_for_another_model():
    plan, _, _ = make_plan(tiny_llama(layers=6), [("block", 2)])
    with pytest.raises(dc.DepthcutError, match="plan was made for a model with 6 blocks"):
        dc.apply(tiny_llama(layers=5), plan)


def test_apply_does_not_touch_the_input_model():
    model = tiny_llama(layers=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan, _, _ = make_plan(model, [("block", 2), ("mlp", 3)])
    dc.apply(model, plan)
    assert model.config.num_hidden_layers == 6
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key])
    assert probe_inputs(model)["input_ids"].shape == (1, 8)
