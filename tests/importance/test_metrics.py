import math

import pytest
import torch

import depthcut as dc
from depthcut.calibrate import BlockCache
from depthcut.errors import ConfigError
from depthcut.graph.structure import discover_structure
from depthcut.importance import functional as F
from depthcut.importance.reference import NaiveScorer
from depthcut.importance.registry import get_importance
from depthcut.units.discover import discover_units
from tiny import BUILDERS, tiny_calib, tiny_llama

METRICS = ["bi", "angular", "gromov", "kl", "ce", "ppl"]


def setup(arch="llama", pad=4, tokens="all"):
    model = BUILDERS[arch](layers=5)
    s = discover_structure(model)
    units = discover_units(model, s, ("block", "attention", "mlp"))
    calib = tiny_calib(pad_last=pad)
    return model, s, units, calib, BlockCache(model, s, calib, progress=False)


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("metric", METRICS)
def test_cached_metric_equals_naive_full_model(arch, metric):
    model, s, units, calib, cache = setup(arch)
    naive = NaiveScorer(model, s, calib)
    m = get_importance(metric)()
    for unit in units[3:9]:
        assert m.score(cache, unit) == pytest.approx(naive.score(metric, unit, []), rel=1e-6)


def test_block_influence_matches_hand_loop():
    model, s, units, calib, cache = setup(pad=0)
    inputs = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
        for layer in model.model.layers
    ]
    outs = []
    hooks.append(model.model.layers[2].register_forward_hook(lambda m, a, o: outs.append(o)))
    with torch.no_grad():
        model(input_ids=calib.input_ids, use_cache=False)
    for h in hooks:
        h.remove()
    x, y = inputs[2], outs[0]
    cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
    expected = float((1 - cos).mean())
    got = get_importance("bi")().score(cache, units[6])  # block:2
    assert units[6].id == "block:2"
    assert got == pytest.approx(expected, rel=1e-5)


def test_padding_never_counts():
    model, s, units, calib, _ = setup(pad=6)
    other = calib.input_ids.clone()
    other[-1, -6:] = 50  # change only padded positions
    calib2 = dc.data.CalibData(other, calib.attention_mask, calib.batch_size)
    for metric in ["bi", "kl", "ce"]:
        m = get_importance(metric)()
        a = m.score(BlockCache(model, s, calib, progress=False), units[4])
        b = get_importance(metric)().score(BlockCache(model, s, calib2, progress=False), units[4])
        assert a == pytest.approx(b, rel=1e-9)


def test_gromov_spans_match_angular_of_cached_states():
    model, s, units, calib, cache = setup(pad=0)
    spans = get_importance("gromov")().spans(cache)
    assert len(spans) == 5 * 6 // 2
    x0, x3 = cache.inputs[1][0], cache.inputs[4][0]
    d = torch.arccos(F.cosine(x0, x3).clamp(-1, 1)) / math.pi
    d2 = torch.arccos(F.cosine(cache.inputs[1][1], cache.inputs[4][1]).clamp(-1, 1)) / math.pi
    d3 = torch.arccos(F.cosine(cache.inputs[1][2], cache.inputs[4][2]).clamp(-1, 1)) / math.pi
    assert spans["1:3"] == pytest.approx(float(torch.cat([d, d2, d3]).mean()), rel=1e-9)


def test_last_token_mask():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 0]])
    last = F.token_mask(mask, "last")
    assert last.nonzero().tolist() == [[0, 2], [1, 3], [2, 2]]


def test_unknown_metric_lists_known_ones():
    with pytest.raises(dc.DepthcutError, match="known: angular, bi, ce, gromov, kl, ls, ppl"):
        dc.PruneConfig(importance="nope")


def test_scoring_cost_is_counted_in_forward_equivalents():
    model = tiny_llama(layers=5)
    cfg = dc.PruneConfig(units=("block",), importance="bi", budget=dc.Budget(params=0.2))
    scores = dc.score(model, cfg, tiny_calib(), progress=False)
    # one capture forward; block units reuse cached inputs/outputs: no extra block runs
    assert scores.cost["forward_equivalents"] == pytest.approx(1.0)


def test_config_knows_exactly_the_registered_metrics():
    import depthcut.methods  # noqa: F401  (the families register their metrics)
    from depthcut.config import DEPTH_METRICS, FINE_METRICS, WIDTH_METRICS
    from depthcut.importance.registry import available, get_importance

    assert available() == sorted(DEPTH_METRICS)
    assert available("width") == sorted(WIDTH_METRICS)
    assert available("fine") == sorted(FINE_METRICS)
    with pytest.raises(ConfigError, match="unknown width importance 'l1'; known: activation_"):
        get_importance("l1", family="width")
