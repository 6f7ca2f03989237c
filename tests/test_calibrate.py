"""The block-input cache replays exactly what the model computes (an independent full forward
or the hook-bypassed model is the reference) and counts its work in forward-equivalents."""

import torch

from depthcut.calibrate import BlockCache
from depthcut.graph.structure import discover_structure
from depthcut.units.bypass import bypassed
from depthcut.units.discover import discover_units
from tiny import tiny_calib, tiny_llama


def _setup(layers=6):
    model = tiny_llama(layers=layers)
    structure = discover_structure(model)
    calib = tiny_calib()
    return model, structure, calib, BlockCache(model, structure, calib, progress=False)


def _units(model, structure):
    return {u.id: u for u in discover_units(model, structure, ("block", "attention", "mlp"))}


def test_replay_from_block_zero_equals_the_full_forward():
    model, _, calib, cache = _setup()
    assert cache.forward_equivalents == 1.0
    for b, batch in enumerate(calib.batches()):
        with torch.no_grad():
            expected = model(**batch, use_cache=False).logits
        torch.testing.assert_close(cache.logits(cache.run_from(0, b)), expected)
    assert cache.forward_equivalents == 2.0  # the capture, then one full replay


def test_replay_with_a_unit_bypassed_equals_the_bypassed_model():
    model, structure, calib, cache = _setup()
    unit = _units(model, structure)["mlp:3"]
    batch = calib.batches()[1]
    with torch.no_grad(), bypassed(model, structure, [unit]):
        expected = model(**batch, use_cache=False).logits
    torch.testing.assert_close(cache.logits(cache.run_from(2, 1, [unit])), expected)


def test_remove_refreshes_the_inputs_after_the_block():
    model, structure, calib, cache = _setup()
    unit = _units(model, structure)["block:2"]
    before = [cache.inputs[j][0].clone() for j in range(7)]
    cache.remove(unit)
    seen = {}

    def hook(i):
        def record(module, args, kwargs):
            seen.setdefault(i, kwargs.get("hidden_states", args[0] if args else None))

        return record

    blocks = model.model.layers
    handles = [
        blk.register_forward_pre_hook(hook(i), with_kwargs=True) for i, blk in enumerate(blocks)
    ]
    try:
        with torch.no_grad(), bypassed(model, structure, [unit]):
            model(**calib.batches()[0], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    for j in (0, 1, 2):  # before and at the removed block: unchanged
        torch.testing.assert_close(cache.inputs[j][0], before[j])
    for j in (4, 5):  # after it: the bypassed model's inputs
        torch.testing.assert_close(cache.inputs[j][0], seen[j])
        assert not torch.allclose(cache.inputs[j][0], before[j])
