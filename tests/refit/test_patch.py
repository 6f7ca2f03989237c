"""--repair patch (LinearPatch): Hadamard matrices, the patch aligns the rotated channel
magnitudes at the interface with the dense model's (computed here by hooks, independently),
its parameters are counted, saved → loaded == in memory, generate with KV cache == without,
and what it cannot bridge (sublayers, width plans, exports) is refused in one line."""

import json

import pytest
import torch

import depthcut as dc
from depthcut.errors import ConfigError, UnsupportedModelError
from depthcut.formats.run import export_run
from depthcut.refit.patch import hadamard
from support import assert_reloads_equal, make_plan, real_tokens, run_masked
from tiny import tiny_calib, tiny_llama


def calib():
    return tiny_calib(n=12, length=24)


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 28, 32, 36, 72, 576, 640, 896])
def test_hadamard_is_orthonormal_with_equal_magnitudes(n):
    h = hadamard(n)
    torch.testing.assert_close(h @ h.T, torch.eye(n, dtype=h.dtype))
    torch.testing.assert_close(h.abs() * n**0.5, torch.ones_like(h))


def test_hadamard_of_an_unbuilt_order_is_refused():
    with pytest.raises(UnsupportedModelError, match="no Hadamard matrix of order 3"):
        hadamard(3)


def streams(model, blocks: list[int], data) -> dict[int, torch.Tensor]:
    """{block: its input on the real calibration tokens} (float64)."""
    seen: dict[int, list] = {b: [] for b in blocks}
    layers = model.model.layers
    hooks = [
        layers[b].register_forward_pre_hook(lambda m, a, b=b: seen[b].append(a[0])) for b in blocks
    ]
    masks = run_masked(model, data, hooks)
    return {b: real_tokens(v, masks) for b, v in seen.items()}


def test_patch_aligns_the_rotated_magnitudes_with_the_dense_stream():
    """Blocks 2–3 removed: the stream entering block 4 of the patched, pruned model has, per
    Hadamard-rotated channel, the dense model's mean magnitude at block 4's input."""
    model, data = tiny_llama(seed=0), calib()
    dense = streams(model, [4], data)[4]
    plan = make_plan(model, [("block", 2), ("block", 3)])[0]
    report = dc.repair(model, plan, data, "patch", progress=False)
    assert [p["host"] for p in report["patches"]] == ["model.layers.1"]
    pruned = dc.apply(model, plan)
    h = hadamard(32)
    patched = streams(pruned, [2], data)[2]  # block 4 is the third block left
    torch.testing.assert_close((patched @ h).abs().mean(0), (dense @ h).abs().mean(0))
    unpatched = streams(dc.apply(tiny_llama(seed=0), plan), [2], data)[2]
    assert not torch.allclose((unpatched @ h).abs().mean(0), (dense @ h).abs().mean(0))


def test_patch_parameters_are_counted_and_the_run_reloads_equal(tmp_path):
    model, data = tiny_llama(seed=1), calib()
    plan = make_plan(model, [("block", 0), ("block", 4), ("block", 5)])[0]
    plain = dc.apply(model, plan)
    report = dc.repair(model, plan, data, "patch", progress=False)
    assert [p["host"] for p in report["patches"]] == ["model.embed_tokens", "model.layers.3"]
    pruned = dc.apply(model, plan, inplace=True)
    count = sum(p.numel() for p in pruned.parameters())
    assert count == sum(p.numel() for p in plain.parameters()) + 2 * 32 * 32
    ids = data.input_ids[:2]
    loaded = assert_reloads_equal(pruned, plan, tmp_path / "run", ids)
    saved = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert saved["run"]["repair"]["params_added"] == 2 * 32 * 32
    with torch.no_grad():
        assert not torch.allclose(plain(ids).logits, pruned(ids).logits)
    with_cache = loaded.generate(ids[:1, :8], max_new_tokens=6, do_sample=False)
    without = loaded.generate(ids[:1, :8], max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without)
    with pytest.raises(UnsupportedModelError, match="LinearPatch modules on the residual stream"):
        export_run(tmp_path / "run", "hf", tmp_path / "hf")


@pytest.mark.parametrize("which", ["sublayer", "width"])
def test_patch_refuses_what_it_cannot_bridge(which):
    model = tiny_llama()
    if which == "sublayer":
        plan, match = make_plan(model, [("attention", 3)])[0], "removes sublayers"
    else:
        cfg = dc.PruneConfig(units=("neuron",), neurons=0.25, width_importance="magnitude")
        plan = dc.plan(dc.score(model, cfg, calib(), progress=False), cfg, model)
        match = "use --repair ls for this plan"
    with pytest.raises(ConfigError, match=match):
        dc.repair(model, plan, calib(), "patch", progress=False)
