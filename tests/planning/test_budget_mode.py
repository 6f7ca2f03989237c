"""--budget-mode: at_least never lands under the target, at_most never over it (and nothing
that still fits is left out), nearest lands on the closer side; for ranked, iterative,
contiguous and fine-grained plans."""

import dataclasses

import pytest

import depthcut as dc
from depthcut.errors import BudgetError, ConfigError
from depthcut.methods.depth.planner import unit_pool
from depthcut.planning.select import Selection, budget_target
from tiny import tiny_calib, tiny_llama

MODES = ("at_least", "at_most", "nearest")


def config(mode, **kw):
    kw.setdefault("units", ("block", "attention", "mlp"))
    return dc.PruneConfig(budget=dc.Budget(params=0.23, mode=mode), **kw)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(layers=8)


def plans(model, **kw):
    scores = dc.score(model, config("at_least", **kw), tiny_calib(), progress=False)
    out = {m: dc.plan(scores, config(m, **kw), model) for m in MODES}
    return scores, out, budget_target(scores.model, config("at_least", **kw))


def check_sides(out, target):
    under, over = out["at_most"].removed_params, out["at_least"].removed_params
    assert 0 < under <= target <= over
    assert under < over  # this budget falls between two unit sizes
    closer = min((under, over), key=lambda r: (abs(r - target), r))
    assert out["nearest"].removed_params == closer


@pytest.mark.parametrize("strategy", ["ranked", "iterative"])
def test_modes_land_on_their_side_of_the_target(model, strategy):
    scores, out, target = plans(model, strategy=strategy)
    check_sides(out, target)


def test_at_most_leaves_out_only_units_that_do_not_fit(model):
    scores, out, target = plans(model)
    cfg = config("at_most")
    pool = unit_pool(scores, cfg)
    chosen = Selection(pool)
    for action in out["at_most"].actions:
        chosen.add(scores.unit(action.unit_id))
    room = target - out["at_most"].removed_params
    assert all(chosen.marginal(u) == 0 or chosen.marginal(u) > room for u in pool)


def test_iterative_modes_are_prefixes_of_the_greedy_sequence(model):
    scores, out, target = plans(model, strategy="iterative")
    chosen, totals = Selection(unit_pool(scores, config("at_most"))), []
    for step in scores.sequence:
        chosen.add(scores.unit(step["unit"]))
        totals.append(chosen.removed_params)
    assert out["at_most"].removed_params == max(t for t in totals if t <= target)
    assert out["at_least"].removed_params == min(t for t in totals if t >= target)


def test_contiguous_modes(model):
    scores, out, target = plans(model, units=("block",), importance="gromov", strategy="contiguous")
    check_sides(out, target)
    for plan in out.values():
        blocks = plan.removed_blocks
        assert blocks == list(range(blocks[0], blocks[0] + len(blocks)))
    assert len(out["at_least"].removed_blocks) == len(out["at_most"].removed_blocks) + 1


def test_fine_modes(model):
    scores = dc.score(model, config("at_least", units=("fine",)), tiny_calib(), progress=False)
    out = {m: dc.plan(scores, config(m, units=("fine",))) for m in MODES}
    check_sides(out, budget_target(scores.model, config("at_least", units=("fine",))))


def test_at_most_with_nothing_small_enough_is_refused(model):
    cfg = dataclasses.replace(
        config("at_most", units=("block",)), budget=dc.Budget(params_count=10, mode="at_most")
    )
    scores = dc.score(model, config("at_least", units=("block",)), tiny_calib(), progress=False)
    with pytest.raises(BudgetError, match=r"no unit fits in the target \(10\)"):
        dc.plan(scores, cfg)
    nearest = dataclasses.replace(cfg, budget=dc.Budget(params_count=10, mode="nearest"))
    assert len(dc.plan(scores, nearest).actions) == 1  # never an empty plan


def test_summary_reports_the_target_and_how_close(model):
    scores, out, target = plans(model)
    text = out["at_most"].summary()
    removed = out["at_most"].removed_params
    assert f"target {target:,} params (at_most): removed {removed / target:.1%}" in text


def test_unknown_mode_is_refused():
    with pytest.raises(ConfigError, match="budget mode 'closest' unknown"):
        dc.Budget(params=0.2, mode="closest")
