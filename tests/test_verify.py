"""Save verification block by block (depth and width plans): it accepts what `depthcut.load`
rebuilds identically and catches a changed tensor, a changed plan and a changed block."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import depthcut as dc
from depthcut.errors import OutputWriteError
from depthcut.verify import blockwise_applies, verify_blockwise
from tiny import tiny_calib, tiny_gpt2, tiny_llama

PLANS = {
    "block": dict(units=("block",), budget=dc.Budget(0.3)),
    "sub": dict(units=("attention", "mlp"), budget=dc.Budget(0.3)),
    "width": dict(units=("head", "neuron"), heads=0.25, neurons=0.3),
    "block+neuron": dict(units=("block", "neuron"), budget=dc.Budget(0.2), neurons=0.3),
}


@pytest.fixture(scope="module", params=list(PLANS))
def saved(request, tmp_path_factory):
    torch.manual_seed(0)
    model = tiny_llama(layers=6)
    cfg = dc.PruneConfig(**PLANS[request.param])
    plan = dc.plan(dc.score(model, cfg, tiny_calib(), progress=False), cfg, model)
    pruned = dc.apply(model, plan)
    folder = tmp_path_factory.mktemp("v") / "run"
    dc.save(pruned, plan, folder)  # says "… every rebuilt block match, block by block"
    return pruned, plan, folder


def _tampered(folder, tmp_path, name_part):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    state = load_file(copy / "model.safetensors")
    key = next(k for k in sorted(state) if name_part in k)
    state[key] = state[key].clone()
    state[key].view(-1)[0] += 1e-3
    save_file(state, str(copy / "model.safetensors"), metadata={"format": "pt"})
    return copy


def test_depth_and_width_plans_verify_block_by_block(saved):
    pruned, plan, folder = saved
    assert blockwise_applies(pruned, [plan])
    verify_blockwise(pruned, plan, folder)  # raises on any difference
    reloaded = dc.load(folder)[0]  # and what it accepted really reloads identically
    ids = torch.arange(3, 20).unsqueeze(0)
    torch.testing.assert_close(reloaded(input_ids=ids).logits, pruned(input_ids=ids).logits)


def test_a_changed_block_tensor_is_caught(saved, tmp_path):
    pruned, plan, folder = saved
    with pytest.raises(AssertionError):
        verify_blockwise(pruned, plan, _tampered(folder, tmp_path, "proj"))


def test_a_changed_embedding_is_caught(saved, tmp_path):
    pruned, plan, folder = saved
    with pytest.raises(OutputWriteError, match="embed_tokens.weight differs"):
        verify_blockwise(pruned, plan, _tampered(folder, tmp_path, "embed_tokens"))


def test_another_plan_is_caught(saved):
    pruned, plan, folder = saved
    other = dc.plan_units(tiny_llama(layers=6), ["block:0"])
    with pytest.raises((OutputWriteError, AssertionError, RuntimeError)):
        verify_blockwise(pruned, other, folder)


def test_gpt2_heads_verify_block_by_block(tmp_path):
    """GPT-2 keeps head counts in attention attributes: the meta rebuild sets them too."""
    model = tiny_gpt2(layers=4)
    cfg = dc.PruneConfig(units=("head",), heads=0.25)
    plan = dc.plan(dc.score(model, cfg, tiny_calib(), progress=False), cfg, model)
    pruned = dc.apply(model, plan)
    assert blockwise_applies(pruned, [plan])
    dc.save(pruned, plan, tmp_path / "run")
    verify_blockwise(pruned, plan, tmp_path / "run")
    with pytest.raises(AssertionError):
        verify_blockwise(pruned, plan, _tampered(tmp_path / "run", tmp_path, "c_proj"))


def test_fine_plans_fall_back_to_a_full_reload():
    model = tiny_llama(layers=6)
    plan = dc.plan_units(model, ["model.layers.2.mlp.up_proj"])
    assert not blockwise_applies(dc.apply(model, plan), [plan])
