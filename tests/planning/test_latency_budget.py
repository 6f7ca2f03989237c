"""--budget latency=F: a per-unit decode-latency table measured once when scoring, saved with the
scores, and plans that remove units until their measured time reaches F of a decoded token."""

import pytest

import depthcut as dc
from depthcut.errors import ConfigError
from depthcut.graph.structure import discover_structure
from depthcut.scores import Scores
from depthcut.units.discover import discover_units
from depthcut.units.latency import unit_latency
from tiny import tiny_calib, tiny_llama

UNITS = ("block", "attention", "mlp")


def latency_config(fraction=0.3, mode="at_least", **kw):
    kw.setdefault("units", UNITS)
    return dc.PruneConfig(budget=dc.Budget(latency=fraction, mode=mode), **kw)


def test_a_block_takes_at_least_its_two_sublayers():
    """Hooks time nested intervals: a block's time contains its sublayers' times."""
    model = tiny_llama(layers=4)
    units = discover_units(model, discover_structure(model), UNITS)
    table = unit_latency(model, units, context=16, steps=4)
    assert set(table["units"]) == {u.id for u in units}
    assert table["total"] > 0 and table["device"] == "cpu"
    for b in range(4):
        t = table["units"]
        assert t[f"block:{b}"] >= t[f"attention:{b}"] + t[f"mlp:{b}"] > 0


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    model = tiny_llama(layers=8)
    scores = dc.score(model, latency_config(), tiny_calib(), progress=False)
    path = tmp_path_factory.mktemp("s") / "scores.json"
    scores.save(path)
    return Scores.load(path)


def removed_time(plan, scores) -> float:
    return sum(scores.latency["units"][a.unit_id] for a in plan.actions)


@pytest.mark.parametrize("mode", ["at_least", "at_most"])
def test_plans_land_on_their_side_of_the_latency_target(scored, mode):
    plan = dc.plan(scored, latency_config(mode=mode))
    target = 0.3 * scored.latency["total"]
    removed = removed_time(plan, scored)
    assert plan.run["latency"]["removed"] == pytest.approx(removed)
    assert plan.run["latency"]["target"] == pytest.approx(target)
    assert removed >= target if mode == "at_least" else 0 < removed <= target
    assert "decode time per token: target −30.0%" in plan.summary()


def test_latency_not_parameters_decides_where_a_plan_stops(scored):
    """With every attention sublayer made 100× dearer in the table, a latency plan stops
    after fewer units than the same ranking under the table as measured."""
    cheap = dc.plan(scored, latency_config(units=("attention", "mlp")))
    table = {
        k: v * (100 if k.startswith("attention") else 1) for k, v in scored.latency["units"].items()
    }
    dear = Scores.from_dict({**scored.to_dict(), "latency": {**scored.latency, "units": table}})
    plan = dc.plan(dear, latency_config(units=("attention", "mlp")))
    assert removed_time(plan, dear) >= 0.3 * dear.latency["total"]
    assert len(plan.actions) <= len(cheap.actions)


def test_iterative_scoring_follows_the_latency_target():
    model = tiny_llama(layers=8)
    cfg = latency_config(strategy="iterative", importance="bi")
    scores = dc.score(model, cfg, tiny_calib(), progress=False)
    plan = dc.plan(scores, cfg)
    assert removed_time(plan, scores) >= 0.3 * scores.latency["total"]


def test_bad_latency_budgets_are_refused(scored):
    with pytest.raises(ConfigError, match=r"latency=1.5 must be a fraction in \(0, 1\)"):
        dc.Budget(latency=1.5)
    with pytest.raises(ConfigError, match="--budget latency covers block, attention and mlp"):
        latency_config(units=("block", "neuron"), neurons=0.2)
    plain = Scores.from_dict({**scored.to_dict(), "latency": None})
    with pytest.raises(ConfigError, match="these scores have no latency table"):
        dc.plan(plain, latency_config())
    assert dc.Budget.parse("latency=0.2", "nearest") == dc.Budget(latency=0.2, mode="nearest")


def test_cli_prune_with_a_latency_budget(capsys, tiny_dir, pattern_file, tmp_path):
    import json

    from support import prune_args, run

    args = prune_args(tiny_dir, tmp_path / "r", pattern_file, "--units", "block,attention,mlp")
    args[args.index("params=0.2")] = "latency=0.25"
    code, out, err = run(capsys, *args, "--budget-mode", "nearest")
    assert code == 0, err
    plan = json.loads((tmp_path / "r" / "plan.json").read_text())
    latency = plan["run"]["latency"]
    assert latency["target"] == pytest.approx(0.25 * latency["total"])
    scores = json.loads((tmp_path / "r" / "scores.json").read_text())
    removed = sum(scores["latency"]["units"][f"{a['kind']}:{a['block']}"] for a in plan["actions"])
    assert latency["removed"] == pytest.approx(removed)
    assert "decode time per token: target −25.0%" in out
