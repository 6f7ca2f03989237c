"""Heads (whole KV groups) and neurons: slicing equals zeroing, GQA stays valid, reload."""

from dataclasses import replace

import pytest
import torch

import depthcut as dc
from depthcut.errors import ConfigError
from depthcut.graph.structure import discover_structure
from depthcut.io import logits_on_probe
from depthcut.methods.width.importance import width_scores
from depthcut.methods.width.layers import width_layers
from depthcut.methods.width.select import select_width
from tiny import BUILDERS, tiny_bert, tiny_calib, tiny_llama, tiny_tokenizer


def zeroed_reference(model, kind, removal, ids, output="logits"):
    """Original model with the removed units' channels zeroed at the consumer's input."""
    s = discover_structure(model)
    layers = {w.id: w for w in width_layers(model, s, kind)}
    modules = dict(model.named_modules())
    handles = []
    for lid, units in removal.items():
        part = layers[lid].parts[-1]
        ch = part.channels(units)

        def hook(module, args, ch=ch):
            x = args[0].clone()
            x[..., ch] = 0
            return (x,)

        handles.append(modules[part.path].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            return getattr(model(input_ids=ids, use_cache=False), output)
    finally:
        for h in handles:
            h.remove()


def width_cfg(kind, fraction=0.4, metric="magnitude", **kw):
    key = "heads" if kind == "head" else "neurons"
    args = {"protect_first": 1, "protect_last": 1, key: fraction, "repair": "none"} | kw
    return dc.PruneConfig(units=(kind,), width_importance=metric, **args)


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("kind", ["head", "neuron"])
def test_sliced_equals_zeroed(arch, kind):
    model = BUILDERS[arch](layers=5)
    cfg = width_cfg(kind, 0.3 if kind == "neuron" else 0.25)
    scores = dc.score(model, cfg, tiny_calib(), progress=False)
    plan = dc.plan(scores, cfg)
    assert plan.actions and all(a.kind == kind for a in plan.actions)
    removal = {f"{kind}:{a.block}": list(a.members) for a in plan.actions}
    ids = torch.randint(3, 97, (2, 9))
    expected = zeroed_reference(model, kind, removal, ids)
    pruned = dc.apply(model, plan)
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=ids, use_cache=False).logits, expected)
    removed = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in pruned.parameters()
    )
    assert removed == plan.removed_params > 0


def test_gqa_groups_stay_whole_and_generate_with_cache():
    model = tiny_llama(layers=5)  # 4 query heads, 2 KV heads, head_dim 8
    cfg = width_cfg("head", 0.3)
    plan = dc.plan(dc.score(model, cfg, tiny_calib(), progress=False), cfg)
    pruned = dc.apply(model, plan)
    for block in {a.block for a in plan.actions}:
        attn = pruned.model.layers[block].self_attn
        assert attn.q_proj.out_features == 2 * 8 and attn.k_proj.out_features == 8
        assert attn.v_proj.out_features == 8 and attn.o_proj.in_features == 16
    ids = torch.randint(3, 97, (2, 5))
    kw = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
    with torch.no_grad():
        torch.testing.assert_close(
            pruned.generate(ids, use_cache=True, **kw), pruned.generate(ids, use_cache=False, **kw)
        )


def test_activation_frequency_against_hand_count():
    model = tiny_llama(layers=3)
    s = discover_structure(model)
    layers = width_layers(model, s, "neuron")
    calib = tiny_calib(n=4, pad_last=5)
    seen = []
    h = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].detach())
    )
    with torch.no_grad():
        for batch in calib.batches():
            model(**batch, use_cache=False)
    h.remove()
    acts = torch.cat([x[b["attention_mask"].bool()] for x, b in zip(seen, calib.batches())])
    expected = (acts.abs() > 0.01).double().mean(0)
    got = width_scores(model, layers, calib, "activation_frequency", 0.01, progress=False)
    torch.testing.assert_close(torch.tensor(got["neuron:1"], dtype=torch.float64), expected)
    assert acts.shape[0] == 4 * 20 - 5  # padding excluded


@pytest.mark.parametrize("metric", ["taylor", "output_norm", "activation_frequency"])
def test_data_metrics_run_and_differ_from_magnitude(metric):
    model = tiny_llama(layers=4)
    s = discover_structure(model)
    layers = width_layers(model, s, "neuron")
    a = width_scores(model, layers, tiny_calib(), metric, progress=False)
    b = width_scores(model, layers, None, "magnitude", progress=False)
    assert len(a["neuron:2"]) == 64 and all(v >= 0 for v in a["neuron:2"])
    assert a["neuron:2"] != b["neuron:2"]


def test_heterogeneous_sizes_save_and_reload(tmp_path):
    model = tiny_llama(layers=5)
    cfg = dc.PruneConfig(
        units=("block", "head", "neuron"),
        budget=dc.Budget(params=0.15),
        heads=0.25,
        neurons=0.3,
        width_importance="taylor",
        round_to=8,
    )
    plan = dc.plan(dc.score(model, cfg, tiny_calib(), progress=False), cfg)
    kinds = [a.kind for a in plan.actions]
    assert kinds == sorted(kinds, key=["block", "attention", "mlp", "head", "neuron"].index)
    pruned = dc.apply(model, plan)
    widths = {layer.mlp.down_proj.in_features for layer in pruned.model.layers}
    assert all(w % 8 == 0 for w in widths)
    out = dc.save(pruned, plan, tmp_path / "o", tiny_tokenizer())
    reloaded, _ = dc.load(out)
    torch.testing.assert_close(logits_on_probe(reloaded), logits_on_probe(pruned))


def test_uniform_neurons_reload_with_plain_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_llama(layers=4)
    cfg = width_cfg("neuron", 0.25, protect_first=0, protect_last=0)
    scores = dc.score(model, cfg, tiny_calib(), progress=False)
    scores.width["neuron"]["scores"] = {
        k: list(range(64)) for k in scores.width["neuron"]["scores"]
    }
    plan = dc.plan(scores, cfg)
    pruned = dc.apply(model, plan)
    assert pruned.config.intermediate_size == 48
    out = dc.save(pruned, plan, tmp_path / "o")
    plain = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    torch.testing.assert_close(logits_on_probe(plain), logits_on_probe(pruned))


def test_min_heads_and_bad_inputs():
    layers = {f"head:{b}": {"block": b, "size": 2, "unit_params": 1} for b in range(4)}
    scores = {k: [0.0, 1.0] for k in layers}
    got = select_width(layers, scores, 0.5, 4, (0, 0), min_units=1)
    assert got == {k: [0] for k in layers}
    with pytest.raises(dc.DepthcutError, match="width budget unreachable"):
        select_width(layers, scores, 0.75, 4, (0, 0), min_units=1)
    wide = {f"neuron:{b}": {"block": b, "size": 16, "unit_params": 1} for b in range(2)}
    ranks = {"neuron:0": list(range(16)), "neuron:1": [3.5] + [100 + i for i in range(15)]}
    # 5 lowest: units 0-3 of layer 0 (kept 12) and unit 0 of layer 1, whose kept 15 rounds up
    # to 16: layer 1 loses nothing and must not appear
    assert select_width(wide, ranks, 5 / 32, 2, (0, 0), round_to=4) == {"neuron:0": [0, 1, 2, 3]}
    with pytest.raises(dc.DepthcutError, match="round_to=4 is larger than the layer width 2"):
        select_width(layers, scores, 0.25, 4, (0, 0), round_to=4)
    with pytest.raises(dc.DepthcutError, match="known: magnitude, taylor"):
        dc.PruneConfig(units=("head",), heads=0.2, width_importance="nope")
    with pytest.raises(dc.DepthcutError, match="heads=FRACTION"):
        dc.PruneConfig(units=("head", "neuron"), neurons=0.2)


def test_one_width_kind_alone_follows_the_parameter_budget():
    """No --neurons: the neuron fraction is the parameter target over all neuron parameters,
    and the plan removes that many parameters (up to rounding to whole neurons)."""
    model = tiny_llama(layers=6)
    cfg = dc.PruneConfig(units=("neuron",), budget=dc.Budget(params=0.2, count="non_embedding"))
    plan = dc.plan(dc.score(model, cfg, tiny_calib(), progress=False), cfg, model)
    target = round(0.2 * plan.model["params_non_embedding"])
    per_neuron = plan.actions[0].params // len(plan.actions[0].members)
    assert abs(plan.removed_params - target) <= per_neuron
    with pytest.raises(dc.DepthcutError, match="budget unreachable"):
        big = dc.PruneConfig(units=("neuron",), budget=dc.Budget(params=0.99))
        dc.plan(dc.score(model, big, tiny_calib(), progress=False), big, model)


def test_iterative_width_steps():
    model = tiny_llama(layers=6)
    one = width_cfg("neuron", 0.3, width_steps=1)
    three = width_cfg("neuron", 0.3, width_steps=3)
    calib = tiny_calib()
    scores3 = dc.score(model, three, calib, progress=False)
    steps = scores3.width["neuron"]["steps"]
    counts = [sum(len(u) for u in step.values()) for step in steps]
    total = 6 * 64
    assert counts == [round(0.1 * total), round(0.2 * total), round(0.3 * total)]
    for before, after in zip(steps, steps[1:]):  # earlier removals are kept
        assert all(set(u) <= set(after.get(lid, [])) for lid, u in before.items())
    plan3 = dc.plan(scores3, three)
    # magnitude does not change for units that stay: iterative equals one-shot exactly
    plan1 = dc.plan(dc.score(model, one, calib, progress=False), one)
    assert [a.members for a in plan3.actions] == [a.members for a in plan1.actions]
    with pytest.raises(dc.DepthcutError, match="re-score"):
        dc.plan(scores3, width_cfg("neuron", 0.2, width_steps=3))


def test_iterative_taylor_is_valid_and_reloads(tmp_path):
    model = tiny_llama(layers=6)
    cfg = dc.PruneConfig(
        units=("head", "neuron"), heads=0.2, neurons=0.25, width_importance="taylor", width_steps=2
    )
    plan = dc.plan(dc.score(model, cfg, tiny_calib(), progress=False), cfg)
    removal = {a.unit_id: list(a.members) for a in plan.actions}
    assert sum(len(u) for k, u in removal.items() if k.startswith("neuron")) == round(0.25 * 384)
    pruned = dc.apply(model, plan)
    out = dc.save(pruned, plan, tmp_path / "o")
    torch.testing.assert_close(logits_on_probe(dc.load(out)[0]), logits_on_probe(pruned))
    with pytest.raises(dc.DepthcutError, match="width-only"):
        dc.PruneConfig(units=("block", "neuron"), neurons=0.2, width_steps=2)


@pytest.mark.parametrize("kind", ["head", "neuron"])
def test_bert_encoder_width_sliced_equals_zeroed_and_reloads(tmp_path, kind):
    from tiny import tiny_bert

    model = tiny_bert()
    cfg = width_cfg(kind, 0.25, metric="output_norm")
    plan = dc.plan(dc.score(model, cfg, tiny_calib(), progress=False), cfg)
    removal = {f"{kind}:{a.block}": list(a.members) for a in plan.actions}
    ids = torch.randint(3, 97, (2, 9))
    expected = zeroed_reference(model, kind, removal, ids, "last_hidden_state")
    pruned = dc.apply(model, plan)
    with torch.no_grad():
        got = pruned(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, expected)
    out = dc.save(pruned, plan, tmp_path / "o")
    reloaded, _ = dc.load(out)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).last_hidden_state, got)
    with pytest.raises(dc.DepthcutError, match="language-modeling loss"):
        dc.score(model, width_cfg(kind, 0.25, metric="taylor"), tiny_calib(), progress=False)


def test_per_layer_scope_removes_the_same_share_of_every_layer():
    layers = {f"neuron:{b}": {"block": b, "size": 10, "unit_params": 1} for b in range(4)}
    scores = {f"neuron:{b}": [float((7 * u + b) % 10) for u in range(10)] for b in range(4)}
    got = select_width(layers, scores, 0.3, 4, (1, 0), scope="per_layer")
    assert sorted(got) == ["neuron:1", "neuron:2", "neuron:3"]
    for lid, units in got.items():
        assert units == sorted(sorted(range(10), key=lambda u: scores[lid][u])[:3])
    with pytest.raises(dc.DepthcutError, match="unreachable"):
        select_width(layers, scores, 0.95, 4, (0, 0), min_units=2, scope="per_layer")
    with pytest.raises(dc.DepthcutError, match="per_layer"):
        dc.PruneConfig(units=("neuron",), neurons=0.2, width_scope="layer")


def test_uniform_heads_reload_with_plain_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_llama(layers=4)
    cfg = width_cfg("head", 0.5, protect_first=0, protect_last=0, width_scope="per_layer")
    plan = dc.plan(dc.score(model, cfg, tiny_calib(), progress=False), cfg)
    pruned = dc.apply(model, plan)
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (2, 1)
    out = dc.save(pruned, plan, tmp_path / "o")
    plain = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    torch.testing.assert_close(logits_on_probe(plain), logits_on_probe(pruned))


def test_width_scores_round_trip_through_json(tmp_path):
    from depthcut.scores import Scores

    model = tiny_llama(layers=5)
    cfg = dc.PruneConfig(
        units=("block", "head", "neuron"),
        heads=0.2,
        neurons=0.3,
        width_steps=1,
        budget=dc.Budget(params=0.1),
    )
    scores = dc.score(model, cfg, tiny_calib(), progress=False)
    scores.save(tmp_path / "s.json")
    again = Scores.load(tmp_path / "s.json")
    assert again.width == scores.width
    assert dc.plan(again, cfg).to_json() == dc.plan(scores, cfg).to_json()


def test_missing_head_attribute_table_entry_is_named(monkeypatch):
    """Phi-3 keeps its query-head count in its config: without HEAD_ATTRS' entry the pruned
    attention cannot run, and the error names the table instead of a shape mismatch."""
    from depthcut.errors import UnsupportedModelError
    from depthcut.methods.width import layers
    from tiny import tiny_phi3

    model = tiny_phi3(layers=4)
    cfg = width_cfg("head", 0.5, protect_first=0, protect_last=0, width_scope="per_layer")
    plan = dc.plan(dc.score(model, cfg, tiny_calib(), progress=False), cfg)
    monkeypatch.delitem(layers.HEAD_ATTRS, "phi3")
    with pytest.raises(UnsupportedModelError, match=r"phi3: attention fails after head pruning"):
        dc.apply(model, plan)


@pytest.mark.parametrize("kind", ["neuron", "head"])
def test_output_norm_is_the_mean_norm_of_each_units_consumer_input(kind):
    """Hand computation: a neuron owns one input channel of down_proj, a head unit (a whole
    KV group: 2 query heads × 8 dims here) 16 contiguous input channels of o_proj; the score is
    the mean over real tokens of the L2 norm of the unit's channels."""
    model = tiny_llama(layers=3)
    layers = width_layers(model, discover_structure(model), kind)
    calib = tiny_calib(n=4, pad_last=5)
    consumer = model.model.layers[1].mlp.down_proj if kind == "neuron" else None
    consumer = consumer or model.model.layers[1].self_attn.o_proj
    seen = []
    h = consumer.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        for batch in calib.batches():
            model(**batch, use_cache=False)
    h.remove()
    acts = torch.cat([x[b["attention_mask"].bool()] for x, b in zip(seen, calib.batches())])
    owned = 1 if kind == "neuron" else 16
    expected = acts.double().view(acts.shape[0], -1, owned).norm(dim=-1).mean(0)
    got = width_scores(model, layers, calib, "output_norm", progress=False)
    torch.testing.assert_close(torch.tensor(got[f"{kind}:1"], dtype=torch.float64), expected)


def test_repair_refuses_an_encoder_before_any_scoring():
    """The refits are kept by the held-back next-token loss: an encoder (no LM head) is
    refused in one line by dc.score (before scoring) and by dc.repair."""
    model = tiny_bert()
    cfg = dc.PruneConfig(units=("neuron",), budget=dc.Budget(params=0.1))  # repair auto: ls
    with pytest.raises(ConfigError, match="has no language-model head: use --repair none"):
        dc.score(model, cfg, tiny_calib())
    plan = dc.plan(dc.score(model, replace(cfg, repair="none"), tiny_calib()), cfg)
    with pytest.raises(ConfigError, match=r"BertModel\) has no language-model head"):
        dc.repair(model, plan, tiny_calib(), "ls")
