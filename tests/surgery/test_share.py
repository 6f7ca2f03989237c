"""Shared copies: a candidate shares the dense model's tensors until a repair writes them."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch import nn

from depthcut.methods import apply_plan
from depthcut.refit.run import repair
from depthcut.search import joint
from depthcut.search.budgets import Budgets
from depthcut.search.library import build_table
from depthcut.surgery.share import is_shared, own, shared_copy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import named, tiny_calib, tiny_qwen2  # noqa: E402


def _address(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_a_shared_copy_shares_every_tensor_but_no_module():
    model = tiny_qwen2(layers=2, sliding=False)
    twin = shared_copy(model)
    pairs = list(zip(model.named_parameters(), twin.named_parameters(), strict=True))
    assert all(a == b and _address(p) == _address(q) for (a, p), (b, q) in pairs)
    assert all(p is not q for (_, p), (_, q) in pairs)
    assert twin.model.layers[0] is not model.model.layers[0] and twin.config is not model.config
    twin.model.layers[0].mlp.down_proj = nn.Linear(64, 32)  # surgery replaces, never writes
    assert isinstance(model.model.layers[0].mlp.down_proj.weight, nn.Parameter)
    assert model.model.layers[0].mlp.down_proj.in_features == 64


def test_own_copies_shared_tensors_and_views_of_them_only():
    model = tiny_qwen2(layers=2, sliding=False)
    twin = shared_copy(model)
    attn = twin.model.layers[0].self_attn
    attn.q_proj.weight = nn.Parameter(attn.q_proj.weight.detach()[:8])  # a slice: still shared
    fresh = nn.Parameter(torch.zeros(3))
    attn.register_parameter("extra", fresh)
    own(attn)
    dense = model.model.layers[0].self_attn
    assert not any(is_shared(p) for name, p in attn.named_parameters())
    assert attn.extra is fresh  # not shared: left as it was
    torch.testing.assert_close(attn.q_proj.weight, dense.q_proj.weight[:8], rtol=0, atol=0)
    with torch.no_grad():
        attn.o_proj.weight.zero_()
        attn.q_proj.bias.fill_(1.0)
    assert dense.o_proj.weight.abs().sum() > 0 and (dense.q_proj.bias != 1.0).any()
    other, original = twin.model.layers[1].mlp.up_proj.weight, model.model.layers[1].mlp.up_proj
    assert is_shared(other) and _address(other) == _address(original.weight)


def test_a_realised_candidate_leaves_the_dense_model_untouched_and_equals_a_deep_copy():
    model = tiny_qwen2(layers=4, sliding=False, random_bias=True, intermediate_size=96)
    calib = tiny_calib(n=16, length=32)
    table = build_table(model, calib, progress=False)
    chosen = named(table, ["kv 1/2 + mlp 3/4", "block", "mlp", "keep"])
    plan = joint.assemble(table, chosen, Budgets(params=0.1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deep = copy.deepcopy(model)
    reference_plan = copy.deepcopy(plan)
    report = repair(deep, reference_plan, calib, "ls", progress=False)
    reference = apply_plan(deep, reference_plan, inplace=True)
    assert any(r.get("kept") for r in report["depth"]["runs"])  # a fold was written

    pruned = joint.realise(model, plan, calib)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    ids = calib.batches()[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, reference(ids).logits, rtol=0, atol=0)
    kept = pruned.model.layers[2].self_attn.q_proj.weight  # block 3, untouched
    assert _address(kept) == _address(model.model.layers[3].self_attn.q_proj.weight)
    assert _address(pruned.model.embed_tokens.weight) == _address(model.model.embed_tokens.weight)


def test_memory_of_a_dead_original_is_not_shared():
    """Sharing lasts as long as the original tensor: a later tensor over the same memory (the
    allocator hands freed memory out again) is not copied for nothing."""
    holder = nn.Linear(4, 4)
    twin = shared_copy(holder)
    same_memory = holder.weight.detach()
    assert is_shared(twin.weight) and is_shared(same_memory)
    del holder
    assert not is_shared(same_memory) and not is_shared(twin.weight)
