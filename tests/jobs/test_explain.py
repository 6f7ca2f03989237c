import pytest
import torch

import depthcut as dc
from depthcut.api import plan_units
from depthcut.errors import ConfigError
from depthcut.explain import leave_one_out, pair_dependency, plot_leave_one_out, removed
from tiny import tiny_calib, tiny_llama


def mean_logit(model):
    ids = tiny_calib(n=2, length=10).input_ids
    with torch.no_grad():
        return float(model(input_ids=ids).logits.abs().mean())


def test_leave_one_out_matches_manual_removal(tmp_path):
    model = tiny_llama(layers=4)
    units = ["block:1", "attention:2", "mlp:3"]
    res = leave_one_out(model, units, mean_logit, progress=False)
    assert res["base"] == pytest.approx(mean_logit(model))
    for uid in units:
        manual = dc.apply(model, plan_units(model, [uid]))
        assert res["delta"][uid] == pytest.approx(mean_logit(manual) - res["base"])
    plot_leave_one_out(res, tmp_path / "loo.png")
    assert (tmp_path / "loo.png").read_bytes()[:4] == b"\x89PNG"


def test_pair_dependency_flags_pairs_that_hurt_less_together():
    model = tiny_llama(layers=4)

    def fake(m):  # removing mlp:1 or mlp:2 alone costs 5; both together only 1
        gone = {a.unit_id for a in getattr(m, "_plan", [])}
        return {
            frozenset(): 0,
            frozenset({"mlp:1"}): 5,
            frozenset({"mlp:2"}): 5,
            frozenset({"mlp:1", "mlp:2"}): 1,
            frozenset({"mlp:3"}): 2,
            frozenset({"mlp:1", "mlp:3"}): 9,
        }[frozenset(gone)]

    import depthcut.explain as ex

    original = ex.removed

    def tagged(model, ids):
        out = original(model, ids)
        out._plan = plan_units(model, ids).actions
        return out

    ex.removed = tagged
    try:
        rows = pair_dependency(model, [("mlp:1", "mlp:2"), ("mlp:1", "mlp:3")], fake)
    finally:
        ex.removed = original
    assert [r["dependent"] for r in rows] == [True, False]
    assert rows[0]["delta_ab"] == 1 and rows[1]["delta_ab"] == 9


def test_bad_unit_ids_are_named():
    with pytest.raises(ConfigError, match=r"no such units \['mlp:9'\]"):
        removed(tiny_llama(layers=4), ["mlp:9"])


def test_explain_cli(capsys, tmp_path, tiny_dir, pattern_file):
    import json

    from support import run

    text = pattern_file
    argv = [
        "explain",
        tiny_dir,
        "--units",
        "block",
        "--pairs",
        "block:1+block:2",
        "--out",
        tmp_path / "e",
        "--eval-text",
        text,
        "--window",
        "32",
        "--max-windows",
        "2",
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    result = json.loads((tmp_path / "e" / "explain.json").read_text())
    assert len(result["delta"]) == 6 and len(result["pairs"]) == 1
    assert "block:1 + block:2" in out
