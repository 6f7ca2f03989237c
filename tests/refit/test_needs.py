"""What ``--repair ls`` needs, known before scoring: the widest fit of a config on a model,
the calibration size that covers it, a refusal before any scoring, and statistics held one
block at a time (scores and refit), equal to the one-forward reference."""

import pytest
import torch

import depthcut as dc
from depthcut import api
from depthcut.errors import ConfigError
from depthcut.graph.structure import discover_structure
from depthcut.methods.width import repaired
from depthcut.refit import width as refit_width
from depthcut.refit.needs import Need, auto_samples, check_samples, fit_tokens, repair_need
from depthcut.refit.run import halves
from depthcut.refit.width import Candidates, consumers, fit_candidates, input_grams, refit_columns
from tiny import tiny_calib, tiny_llama


def wide():
    return tiny_llama(intermediate_size=96)  # MLP 96 wide, hidden 32, attention 4 × 8


@pytest.mark.parametrize(
    ("units", "repair", "expected"),
    [
        (("neuron",), "ls", Need(96, "model.layers.0.mlp.down_proj")),
        (("head",), "ls", Need(32, "model.layers.0.self_attn.o_proj")),
        (("block",), "ls", Need(32, "model.layers.0.self_attn.o_proj")),
        (("fine",), "ls", Need(96, "model.layers.0.mlp.down_proj")),
        (("neuron",), "none", Need(0)),
        (("block",), "patch", Need(0)),
    ],
)
def test_the_widest_fit_of_each_repair(units, repair, expected):
    model = wide()
    cfg = dc.PruneConfig(units=units, neurons=0.25, heads=0.25, repair=repair)
    assert repair_need(model, discover_structure(model), cfg) == expected


def test_fitting_tokens_are_those_of_the_even_batches():
    assert fit_tokens(68, 256, 4) == 9 * 4 * 256
    assert fit_tokens(64, 256, 4) == 8 * 4 * 256
    assert fit_tokens(1, 8, 4) == 8  # one batch both fits and checks
    for n in (5, 7, 16):
        fit, _ = halves(tiny_calib(n=n, length=10))
        assert fit_tokens(n, 10, 2) == int(fit.attention_mask.sum())


def test_auto_size_is_the_smallest_that_covers_the_widest_fit():
    need = Need(8960, "model.layers.0.mlp.down_proj")  # Qwen2.5-1.5B's MLP
    n = auto_samples(need, 256, 4)
    assert n == 68 and fit_tokens(n, 256, 4) >= 8960 > fit_tokens(n - 4, 256, 4)
    assert auto_samples(Need(1536), 256, 4) == 16  # never below the tuned default
    check_samples(need, 68, 256, 4)
    with pytest.raises(ConfigError, match=r"8192 fitting tokens .* give --n-samples 68 or more"):
        check_samples(need, 64, 256, 4)


def test_score_refuses_too_little_calibration_before_scoring(monkeypatch):
    model = wide()
    cfg = dc.PruneConfig(units=("neuron",), neurons=0.25, width_importance="ls", repair="ls")
    monkeypatch.setattr(api, "families", lambda units: pytest.fail("scored anyway"))
    message = r"40 fitting tokens .* 96 unknowns .*layers.0.mlp.down_proj: give --n-samples 16"
    with pytest.raises(ConfigError, match=message):
        dc.score(model, cfg, tiny_calib(n=4, length=20), progress=False)


def test_ls_scores_hold_one_blocks_grams(monkeypatch):
    model, seen = wide(), []
    original = repaired.layer_scores

    def spy(modules, layers, grams):
        seen.append(sorted(grams))
        return original(modules, layers, grams)

    monkeypatch.setattr(repaired, "layer_scores", spy)
    cfg = dc.PruneConfig(units=("neuron",), neurons=0.25, width_importance="ls")
    scores = dc.score(model, cfg, tiny_calib(n=8, length=24), progress=False)
    assert seen == [[f"neuron:{i}"] for i in range(6)]
    assert len(scores.width["neuron"]["scores"]) == 6


def test_rolling_refit_equals_the_one_forward_refit(monkeypatch, tmp_path):
    model, data, held = wide(), tiny_calib(n=8, length=24), []
    cfg = dc.PruneConfig(units=("neuron",), neurons=0.3, width_importance="magnitude")
    plan = dc.plan(dc.score(model, cfg, data, progress=False), cfg, model)
    keep = consumers(model, discover_structure(model), plan)
    original = refit_width._block_grams

    def spy(*args):
        grams = original(*args)
        held.append(len(grams))
        return grams

    monkeypatch.setattr(refit_width, "_block_grams", spy)
    store = Candidates(tmp_path, keep)
    fit_candidates(model, discover_structure(model), store, data, (0.01,), progress=False)
    assert held == [1] * len(keep) and len(keep) == 4  # one gram alive at a time
    reference = input_grams(model, list(keep), data, progress=False)
    work = wide()
    store.load_into(work, 0.01)
    for path, channels in keep.items():
        w = model.get_submodule(path).weight.detach()
        expected = refit_columns(w, reference[path], channels, 0.01)
        torch.testing.assert_close(work.get_submodule(path).weight, expected)
    store.load_into(work, None)
    w = model.get_submodule(path).weight.detach()
    channels = [int(c) for c in channels]
    dropped = sorted(set(range(96)) - set(channels))
    assert work.get_submodule(path).weight[:, dropped].abs().max() == 0
    torch.testing.assert_close(work.get_submodule(path).weight[:, channels], w[:, channels])
