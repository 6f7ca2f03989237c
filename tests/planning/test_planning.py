import json

import pytest

import depthcut as dc
from depthcut.graph.structure import discover_structure
from depthcut.importance.reference import NaiveScorer
from depthcut.methods.depth.planner import unit_pool
from depthcut.planning.select import budget_target
from depthcut.scores import Scores
from tiny import tiny_calib, tiny_llama


def scored(units=("block",), importance="bi", strategy="ranked", params=0.3, **kw):
    model = tiny_llama(layers=8)
    cfg = dc.PruneConfig(
        units=units, importance=importance, strategy=strategy, budget=dc.Budget(params=params), **kw
    )
    return model, cfg, dc.score(model, cfg, tiny_calib(), progress=False)


def test_ranked_removes_lowest_scores_outside_protected_blocks():
    model, cfg, scores = scored(protect_first=2, protect_last=2)
    plan = dc.plan(scores, cfg)
    pool = sorted(range(2, 6), key=lambda b: scores.unit_scores[f"block:{b}"])
    target = budget_target(scores.model, cfg)
    block = scores.unit("block:2").params
    k = -(-target // block)
    assert plan.removed_blocks == sorted(pool[:k])
    assert plan.removed_params >= target > plan.removed_params - block


def test_plan_json_round_trip_and_determinism(tmp_path):
    model, cfg, scores = scored(units=("block", "attention", "mlp"))
    plan = dc.plan(scores, cfg)
    plan.save(tmp_path / "p.json")
    again = dc.Plan.load(tmp_path / "p.json")
    assert again.to_dict() == plan.to_dict()
    scores.save(tmp_path / "s.json")
    plan2 = dc.plan(Scores.load(tmp_path / "s.json"), cfg)
    assert plan2.to_json() == plan.to_json()
    _, _, scores3 = scored(units=("block", "attention", "mlp"))
    assert dc.plan(scores3, cfg).to_json() == plan.to_json()  # same seed: byte-identical


def test_summary_reports_both_fractions():
    model, cfg, scores = scored()
    text = dc.plan(scores, cfg).summary()
    assert "of all" in text and "of non-embedding" in text and "block:" in text


def test_contiguous_picks_smallest_span_distance():
    model, cfg, scores = scored(importance="gromov", strategy="contiguous", params=0.2)
    plan = dc.plan(scores, cfg)
    blocks = plan.removed_blocks
    n = len(blocks)
    assert blocks == list(range(blocks[0], blocks[0] + n))
    best = min(range(1, 8 - n), key=lambda s: scores.spans[f"{s}:{n}"])
    assert blocks[0] == best


def test_contiguous_needs_gromov():
    model, cfg, scores = scored(importance="bi")
    cfg2 = dc.PruneConfig(("block",), importance="bi", strategy="contiguous")
    with pytest.raises(dc.DepthcutError, match="gromov"):
        dc.plan(scores, cfg2)


@pytest.mark.parametrize("metric", ["kl", "bi"])
def test_iterative_with_cache_equals_naive_greedy(metric):
    model, cfg, scores = scored(
        units=("block", "attention", "mlp"), importance=metric, strategy="iterative", params=0.35
    )
    plan = dc.plan(scores, cfg)
    naive = NaiveScorer(model, discover_structure(model), tiny_calib())
    order = naive.greedy(metric, unit_pool(scores, cfg), budget_target(scores.model, cfg))
    assert [s["unit"] for s in scores.sequence] == order
    assert plan.removed_params >= budget_target(scores.model, cfg)


@pytest.mark.parametrize("params", [0.0, 1.0, -0.1, 1.5])
def test_budget_outside_unit_interval_is_refused(params):
    with pytest.raises(dc.DepthcutError, match="fraction in"):
        dc.Budget(params=params)


def test_budget_unreachable_with_protections():
    model, cfg, scores = scored()
    cfg2 = dc.PruneConfig(("block",), budget=dc.Budget(0.5), protect_first=3, protect_last=3)
    with pytest.raises(dc.DepthcutError, match="budget unreachable"):
        dc.plan(scores, cfg2)
    with pytest.raises(dc.DepthcutError, match="budget unreachable"):
        dc.score(model, cfg2, tiny_calib(), progress=False)  # refused before any scoring


def test_budget_on_non_embedding_params():
    model, cfg, scores = scored()
    cfg2 = dc.PruneConfig(("block",), budget=dc.Budget(params=0.3, count="non_embedding"))
    plan = dc.plan(scores, cfg2)
    assert plan.fraction("non_embedding") >= 0.3
    assert json.loads(plan.to_json())["run"]["config"]["budget"]["count"] == "non_embedding"
