"""Repair-aware importance (``ls``) against a reference written from the formula: dense hidden
states from hooks on the whole model, the ridge fit by ``torch.linalg.lstsq`` on augmented rows,
the error on the held-back (odd) batches."""

import pytest
import torch

import depthcut as dc
from depthcut.refit.ls import DEPTH_RIDGE
from tiny import tiny_calib, tiny_llama, tiny_neox


def calib():
    return tiny_calib(n=10, length=16, pad_last=5)


def hooked_states(model, batch, block):
    """(block input, block output, stream between attention and MLP, previous block's
    down-projection output) of the dense model on ``batch``."""
    layers = model.model.layers
    seen = {}
    hooks = [
        layers[block].register_forward_pre_hook(
            lambda m, a, kw: seen.update(h=kw.get("hidden_states", a[0] if a else None)),
            with_kwargs=True,
        ),
        layers[block].register_forward_hook(
            lambda m, a, o: seen.update(y=o[0] if isinstance(o, tuple) else o)
        ),
        layers[block].post_attention_layernorm.register_forward_pre_hook(
            lambda m, a: seen.update(mid=a[0])
        ),
    ]
    if block > 0:
        hooks.append(
            layers[block - 1].mlp.down_proj.register_forward_hook(lambda m, a, o: seen.update(m=o))
        )
    with torch.no_grad():
        model(**batch, use_cache=False)
    for h in hooks:
        h.remove()
    return seen


def reference(model, unit_kind, block):
    batches = calib().batches()
    rows = []
    for batch in batches:
        s = hooked_states(model, batch, block)
        y = s["y"] if unit_kind == "block" else s["mid"]
        mask = batch["attention_mask"].bool()
        m = s["m"] if block > 0 else torch.zeros_like(y)
        rows.append((m[mask].double(), (m + y - s["h"])[mask].double(), y[mask].double()))
    w = lambda y: 1 / y.pow(2).sum(-1, keepdim=True)  # noqa: E731
    fit, check = rows[0::2], rows[1::2]
    t = torch.eye(rows[0][0].shape[1], dtype=torch.float64)
    if block > 0:
        x = torch.cat([w(y).sqrt() * m for m, _, y in fit])
        target = torch.cat([w(y).sqrt() * r for _, r, y in fit])
        lam = DEPTH_RIDGE * float((x * x).sum(0).mean())
        eye = torch.eye(x.shape[1], dtype=torch.float64) * lam**0.5
        t = torch.linalg.lstsq(torch.cat([x, eye]), torch.cat([target, eye])).solution
    err = sum(float((w(y) * (r - m @ t).pow(2)).sum()) for m, r, y in check)
    return err / sum(m.shape[0] for m, _, _ in check)


@pytest.mark.parametrize("kind,block", [("block", 2), ("attention", 3), ("block", 0)])
def test_ls_importance_matches_the_formula(kind, block):
    model = tiny_llama(layers=5, seed=7)
    cfg = dc.PruneConfig(units=("block", "attention", "mlp"), importance="ls", protect_first=0)
    scores = dc.score(model, cfg, calib(), progress=False)
    expected = reference(model, kind, block)
    assert scores.unit_scores[f"{kind}:{block}"] == pytest.approx(expected, rel=1e-6)


def test_ls_importance_is_at_most_the_unrepaired_distance_on_its_fitting_tokens():
    """With one batch the fit and check tokens coincide, and the ridge fit (pulled towards the
    unrepaired T = I) cannot leave more error than no fit."""
    model = tiny_llama(layers=5, seed=7)
    one = tiny_calib(n=2, length=40)
    cfg = dc.PruneConfig(units=("block",), importance="ls")
    scores = dc.score(model, cfg, one, progress=False)
    for block in (1, 2, 3):
        (batch,) = one.batches()
        s = hooked_states(model, batch, block)
        plain = ((s["y"] - s["h"]).pow(2).sum(-1) / s["y"].pow(2).sum(-1)).double().mean()
        assert scores.unit_scores[f"block:{block}"] <= float(plain) + 1e-12


def test_parallel_attention_is_measured_at_the_block_output():
    """In a parallel block the MLP reads the block input: removing the attention takes its
    branch out of the block output, which is what the score measures (no repair applies)."""
    model = tiny_neox(parallel=True, seed=2)
    data = calib()
    cfg = dc.PruneConfig(units=("attention",), importance="ls")
    scores = dc.score(model, cfg, data, progress=False)
    layer = model.gpt_neox.layers[2]
    total, count, seen = 0.0, 0, {}
    for b, batch in enumerate(data.batches()):
        hooks = [
            layer.attention.register_forward_hook(lambda m, a, o: seen.update(a=o[0])),
            layer.register_forward_hook(
                lambda m, a, o: seen.update(y=o[0] if isinstance(o, tuple) else o)
            ),
        ]
        with torch.no_grad():
            model(**batch, use_cache=False)
        for h in hooks:
            h.remove()
        if b % 2:
            mask = batch["attention_mask"].bool()
            y, a = seen["y"][mask].double(), seen["a"][mask].double()
            total += float((a.pow(2).sum(-1) / y.pow(2).sum(-1)).sum())
            count += int(mask.sum())
    assert scores.unit_scores["attention:2"] == pytest.approx(total / count, rel=1e-6)
