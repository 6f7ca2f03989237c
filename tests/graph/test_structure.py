import pytest
import torch

from depthcut.errors import UnsupportedModelError
from depthcut.graph.structure import discover_structure
from depthcut.units.discover import count_params, discover_units, embedding_params
from tiny import BUILDERS, tiny_bert_lm, tiny_llama

EXPECTED = {
    "llama": ("model.layers", "self_attn", "input_layernorm", "mlp", "post_attention_layernorm"),
    "gpt2": ("transformer.h", "attn", "ln_1", "mlp", "ln_2"),
    "neox": ("gpt_neox.layers", "attention", "input_layernorm", "mlp", "post_attention_layernorm"),
    "phi3": ("model.layers", "self_attn", "input_layernorm", "mlp", "post_attention_layernorm"),
}


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_discovers_blocks_sublayers_and_norms(arch):
    model = BUILDERS[arch](layers=5)
    s = discover_structure(model)
    blocks, attn, attn_norm, mlp, mlp_norm = EXPECTED[arch]
    assert s.blocks_path == blocks and s.num_blocks == 5
    b = s.blocks[3]
    assert b.attention.path == f"{blocks}.3.{attn}"
    assert b.attention.pre_norms == [f"{blocks}.3.{attn_norm}"]
    assert b.mlp.path == f"{blocks}.3.{mlp}"
    assert b.mlp.pre_norms == [f"{blocks}.3.{mlp_norm}"]
    assert len(s.tail) == 2 and s.tail[-1] == "lm_head"


def test_unit_params_are_exact():
    model = tiny_llama(layers=4)
    s = discover_structure(model)
    units = {u.id: u for u in discover_units(model, s, ("block", "attention", "mlp"))}
    h, inter, kv = 32, 64, 2 * 8
    attn = h * h * 2 + 2 * h * kv + h  # q, o, k, v, input norm
    mlp = 3 * h * inter + h
    assert units["attention:2"].params == attn
    assert units["mlp:2"].params == mlp
    assert units["block:2"].params == attn + mlp
    total = count_params(model)
    assert total == sum(p.numel() for p in model.parameters())
    assert embedding_params(model, s) == 2 * 97 * 32  # untied embedding + LM head


def test_model_without_block_stack_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with pytest.raises(UnsupportedModelError, match="Sequential"):
        discover_structure(model)


def test_post_norm_sublayers_are_refused_but_blocks_work():
    import depthcut as dc
    from depthcut.api import describe
    from depthcut.planning.plan import Action, Plan
    from depthcut.units.bypass import bypassed

    model = tiny_bert_lm()
    s = discover_structure(model)
    with pytest.raises(UnsupportedModelError, match=r"layer\.0\.attention: its output leaves"):
        discover_units(model, s, ("attention",))
    (unit,) = [u for u in discover_units(model, s, ("block",)) if u.block == 2]
    plan = Plan([Action("block", 2, unit.path, unit.params)], describe(model, s))
    ids = torch.randint(3, 97, (2, 7))
    with torch.no_grad(), bypassed(model, s, [unit]):
        expected = model(input_ids=ids).logits
    with torch.no_grad():
        torch.testing.assert_close(dc.apply(model, plan)(input_ids=ids).logits, expected)
