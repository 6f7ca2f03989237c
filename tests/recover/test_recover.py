import copy

import pytest
import torch

import depthcut as dc
from depthcut.data import pack_tokens
from depthcut.errors import ConfigError
from depthcut.losses import kd_loss, lm_loss
from depthcut.recovery.config import RecoverConfig
from depthcut.recovery.lora import add_lora, lora_targets, merge_lora
from depthcut.recovery.run import make_loss, recover, recovery_data
from depthcut.recovery.train import heldout_loss
from support import make_plan
from tiny import VOCAB, pattern_text, tiny_calib, tiny_gpt2, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def pattern_data():
    ids = [3 + (7 * i) % (VOCAB - 3) for i in range(3000)]
    return pack_tokens(ids[:2400], 80, 30, 4), pack_tokens(ids[2400:], 8, 30, 4)


def pruned_llama():
    model = tiny_llama(layers=6)
    plan, _, _ = make_plan(model, [("block", 2), ("mlp", 3)])
    return dc.apply(model, plan), model


@pytest.mark.parametrize(("method", "lr", "drop"), [("full", 3e-3, 0.3), ("lora", 1e-2, 0.05)])
def test_recovery_lowers_heldout_loss_and_keeps_input(pattern_data, method, lr, drop):
    pruned, _ = pruned_llama()
    before = heldout_loss(pruned, pattern_data[1])
    original = copy.deepcopy(pruned.state_dict())
    cfg = RecoverConfig(method=method, lr=lr, max_steps=30, eval_every=10)
    recovered, history = recover(pruned, None, cfg, progress=False, data=pattern_data)
    after = heldout_loss(recovered, pattern_data[1])
    assert after < before - drop
    assert after == pytest.approx(history["best_val_loss"], rel=1e-5)
    assert history["rows"][0]["val_loss"] == pytest.approx(before, rel=1e-6)
    for key, value in pruned.state_dict().items():  # the input model is not touched
        torch.testing.assert_close(value, original[key])
    assert all(not p.requires_grad for p in recovered.parameters())


def test_early_stop_restores_best_state(pattern_data):
    pruned, _ = pruned_llama()
    cfg = RecoverConfig(method="full", lr=0.5, max_steps=40, eval_every=2, patience=2, warmup=0)
    recovered, history = recover(pruned, None, cfg, progress=False, data=pattern_data)
    assert history["stopped"].startswith("early stop")
    assert history["best_step"] == 0 and history["steps"] == 4
    ids = pattern_data[1].input_ids
    torch.testing.assert_close(recovered(ids).logits, pruned(ids).logits)


@pytest.mark.parametrize("builder", [tiny_llama, tiny_gpt2])
def test_lora_merge_equals_unmerged_adapters(builder):
    model = builder(layers=4)
    cfg = RecoverConfig(method="lora", lora_dropout=0.0)
    wrapped = add_lora(copy.deepcopy(model), cfg)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # adapters start at 0: give them a real effect
    ids = tiny_calib(n=2, length=12).input_ids
    wrapped.eval()
    unmerged = wrapped(input_ids=ids).logits
    merged = merge_lora(wrapped)
    torch.testing.assert_close(merged(input_ids=ids).logits, unmerged, rtol=1e-5, atol=1e-5)
    assert (unmerged - model(input_ids=ids).logits).abs().max() > 1e-3
    assert type(merged) is type(model)
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_lora_targets_every_block_transform():
    pruned, _ = pruned_llama()
    targets = lora_targets(pruned)
    # 5 blocks × (q, k, v, o) + 4 blocks with an MLP × (gate, up, down)
    assert len(targets) == 5 * 4 + 4 * 3
    assert all(t.startswith("model.layers.") for t in targets)


def test_kd_loss_is_zero_for_identical_models_and_positive_otherwise():
    model = tiny_llama(layers=4)
    batch = tiny_calib(n=2, length=12, pad_last=3).batches()[0]
    loss = make_loss(
        RecoverConfig(loss="kd", temperature=2.0, teacher_topk=0), copy.deepcopy(model)
    )
    assert loss(model, batch).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(tiny_llama(layers=4, seed=5), batch).item() > 0.01
    logits = torch.randn(2, 5, 11)
    mask = torch.ones(2, 5, dtype=torch.long)
    assert float(kd_loss(logits, logits, mask)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ConfigError, match="teacher"):
        make_loss(RecoverConfig(loss="kd"), None)


def test_lm_loss_matches_transformers_loss_and_skips_padding():
    model = tiny_llama(layers=4)
    data = tiny_calib(n=2, length=12)
    ids, mask = data.input_ids, data.attention_mask
    logits = model(input_ids=ids).logits
    torch.testing.assert_close(lm_loss(logits, ids, mask), model(input_ids=ids, labels=ids).loss)
    padded = mask.clone()
    padded[1, 6:] = 0
    labels = ids.clone()
    labels[1, 6:] = -100
    hf = model(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(lm_loss(logits, ids, padded), hf)


def test_recovery_data_uses_calibration_articles_only(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(pattern_text(articles=40, length=100))
    cfg = RecoverConfig(source=str(text), seq_len=20, batch_size=2, max_steps=5, val_samples=3)
    train, val = recovery_data(tiny_tokenizer(), cfg)
    assert train.input_ids.shape == (10, 20) and val.input_ids.shape == (3, 20)
    # articles 0-27 train, 28-31 validate, 32-39 are the evaluation split (never seen);
    # article a starts with token 3 + a
    assert int(train.input_ids[0, 0]) == 3 and int(val.input_ids[0, 0]) == 3 + 28


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"method": "qlora"}, "method"),
        ({"loss": "mse"}, "loss"),
        ({"max_steps": 0}, "max_steps"),
        ({"warmup": 1.0}, "warmup"),
        ({"lr": 2.0}, "lr"),
    ],
)
def test_bad_recover_config(kw, message):
    with pytest.raises(ConfigError, match=message):
        RecoverConfig(**kw)


@pytest.mark.parametrize("steps", [1, 2])
def test_loop_repairs_every_step_and_leaves_the_teacher(steps):
    """--repair ls inside prune → recover: each step's plan is repaired before it is applied
    (step 1 equals repair + apply by hand) and the dense teacher is never changed."""
    from depthcut.recovery.loop import prune_recover_loop
    from depthcut.refit.run import model_nll

    model, data = tiny_llama(seed=2), tiny_calib(n=12, length=24)
    dense = copy.deepcopy(model)
    cfg = dc.PruneConfig(units=("neuron",), neurons=0.3, width_importance="magnitude", repair="ls")
    pruned, plans, history = prune_recover_loop(
        model, None, cfg, data, steps, None, lambda m: model_nll(m, data), progress=False
    )
    for key, value in model.state_dict().items():
        assert torch.equal(value, dense.state_dict()[key])
    assert len(plans) == steps and all(p.run["repair"]["width"]["layers"] for p in plans)
    if steps == 1:
        by_hand = copy.deepcopy(dense)
        dc.repair(by_hand, plans[0], data, progress=False)
        by_hand = dc.apply(by_hand, plans[0], inplace=True)
        ids = data.input_ids[:2]
        with torch.no_grad():
            torch.testing.assert_close(pruned(ids).logits, by_hand(ids).logits)
        assert history[1]["ppl_pruned"] == pytest.approx(model_nll(by_hand, data))
