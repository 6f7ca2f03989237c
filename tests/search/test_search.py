"""The joint search: option levels, the fold's closed-form error, the exact solver (against
brute force), budgets, the option table on a tiny Llama (parameter accounting against real
surgery, a hand-computed block error) and the correction rounds of the search."""

import copy
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from depthcut.data import copying_windows
from depthcut.errors import BudgetError, ConfigError
from depthcut.graph.structure import discover_structure
from depthcut.importance import functional as F
from depthcut.methods import apply_plan
from depthcut.planning.plan import Plan
from depthcut.refit.ls import fold
from depthcut.search import joint
from depthcut.search.budgets import Budgets
from depthcut.search.frontier import held_back
from depthcut.search.library import OptionTable, build_table
from depthcut.search.options import block_options, levels
from depthcut.search.probe import STRIDE, Probe
from depthcut.search.quality import DepthHooks, fit_error, greedy_levels
from depthcut.search.solve import Limit, best_k
from depthcut.units.bypass import bypassed
from depthcut.units.discover import count_params, discover_units

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import named, tiny_calib, tiny_llama  # noqa: E402


def test_levels_keep_full_first_and_removal_last():
    assert levels(96) == [96, 84, 72, 60, 48, 36, 24, 12, 0]  # eighths
    assert levels(3) == [3, 2, 1, 0]  # 3/4 … 1/2 of 3 KV groups round to 2
    assert levels(2) == [2, 1, 0]
    assert levels(1) == [1, 0]
    names = [o.name for o in block_options(4, 2, 96)]
    assert len(names) == 27 and names[0] == "keep" and names[-1] == "block"
    assert "kv 1/2 + mlp 3/4" in names and "attention" in names and "mlp 1/4" in names
    assert "mlp 7/8" in names and "kv 1/2 + mlp 1/8" in names


def test_fit_error_is_the_least_squares_residual():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(200, 6, generator=g, dtype=torch.float64)
    z = m @ torch.randn(6, 6, generator=g, dtype=torch.float64) + 0.1 * torch.randn(
        200, 6, generator=g, dtype=torch.float64
    )
    t = torch.linalg.lstsq(m, z).solution
    want = float((m @ t - z).pow(2).sum())
    got = fit_error(m.T @ m, m.T @ z, float(z.pow(2).sum()), ridge=1e-12)
    assert got == pytest.approx(want, rel=1e-6)
    # a large ridge pulls T towards I: the error tends to Σ‖Z − M‖² (no fit)
    none = float((z - m).pow(2).sum())
    assert fit_error(m.T @ m, m.T @ z, float(z.pow(2).sum()), ridge=1e9) == pytest.approx(
        none, rel=1e-3
    )


def test_greedy_levels_follow_the_order_pro_rata():
    order = [([3, 1], 2.0), ([0, 5], 4.0), ([2], 1.0)]
    got = greedy_levels(order, 6, [6, 5, 3, 1, 0])
    assert got[5] == {"error": 1.0, "removed": [3]}
    assert got[3] == {"error": 4.0, "removed": [0, 1, 3]}
    assert got[1] == {"error": 7.0, "removed": [0, 1, 2, 3, 5]}
    assert set(got) == {5, 3, 1}


def _instance(seed: int):
    rng = np.random.default_rng(seed)
    groups = [[3 * b, 3 * b + 1, 3 * b + 2] for b in range(4)]
    quality = rng.uniform(0, 10, 12)
    saving = rng.uniform(0, 5, 12)
    for g in groups:  # option 0 of every block is "keep": costs and saves nothing
        quality[g[0]] = saving[g[0]] = 0.0
    return groups, quality, saving


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_solver_finds_the_k_best_choices_of_brute_force(seed):
    groups, quality, saving = _instance(seed)
    target = 0.4 * sum(max(saving[g]) for g in groups)
    feasible = []
    for combo in itertools.product(range(3), repeat=4):
        idx = [g[c] for g, c in zip(groups, combo)]
        if saving[idx].sum() >= target:
            feasible.append((quality[idx].sum(), list(combo)))
    feasible.sort()
    found = best_k(quality, groups, [Limit("latency", saving, target)], k=3)
    assert [s.objective for s in found] == pytest.approx([f[0] for f in feasible[:3]])
    assert len({tuple(s.choice) for s in found}) == 3
    assert found[0].choice == feasible[0][1]


def test_an_unreachable_budget_is_named_with_what_is_reachable():
    groups, quality, saving = _instance(0)
    most = sum(max(saving[g]) for g in groups)
    with pytest.raises(
        BudgetError, match=r"budget kv=1\.2 cannot be met: the options save at most kv=1"
    ):
        best_k(quality, groups, [Limit("kv", saving, 1.2 * most, total=most)])


def test_budgets_parse_and_refuse():
    b = Budgets.parse(["latency=0.3", "kv=0.5", "params=0.2:non_embedding"], mode="nearest")
    assert (b.latency, b.kv, b.params, b.count, b.mode) == (
        0.3,
        0.5,
        0.2,
        "non_embedding",
        "nearest",
    )
    assert b.label == "latency-0.3+kv-0.5+params-0.2"
    for bad, match in [
        (["speed=0.3"], "use latency=F"),
        (["latency=0.3", "latency=0.2"], "given twice"),
        (["latency=1.5"], r"fraction in \(0, 1\)"),
        (["kv=0.2:non_embedding"], "use latency=F"),
        (["latency=fast"], "not a number"),
    ]:
        with pytest.raises(ConfigError, match=match):
            Budgets.parse(bad)


@pytest.fixture(scope="module")
def tiny_table():
    model = tiny_llama(layers=4, intermediate_size=96)
    table = build_table(model, tiny_calib(n=16, length=32), progress=False)
    return model, table


def test_options_remove_exactly_the_parameters_they_count(tiny_table):
    model, table = tiny_table
    chosen = named(table, ["keep", "mlp", "kv 1/2 + mlp 3/4", "block"])
    plan = joint.assemble(table, chosen, Budgets(params=0.1))
    pruned = apply_plan(model, plan)
    assert count_params(model) - count_params(pruned) == sum(map(table.params, chosen))
    assert pruned.config.num_hidden_layers == 3
    layer = pruned.model.layers[2]  # original block 2
    assert layer.mlp.down_proj.in_features == 72 and layer.self_attn.o_proj.in_features == 16
    # KV bytes per token: one KV head of 8 channels, keys and values, float32
    assert table.kv(chosen[0]) == 2 * 2 * 8 * 4 and table.kv(chosen[3]) == 0


def test_a_block_without_a_writer_costs_its_raw_stream_error(tiny_table):
    model, table = tiny_table
    calib = tiny_calib(n=16, length=32)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in calib.batches():
            hs = model(**batch, output_hidden_states=True).hidden_states
            x, y = hs[0].double(), hs[1].double()
            total += float(((y - x).pow(2).sum(-1) / x.pow(2).mean(-1)).sum())
            tokens += x.shape[0] * x.shape[1]
    first = table.blocks[0]
    assert first["block"]["error"] == pytest.approx(total / tokens, rel=1e-6)
    assert not first["attention"]["repaired"] and first["mlp"]["repaired"]
    later = table.blocks[2]["block"]
    assert later["repaired"] and later["error"] <= later["raw"]


def test_the_table_round_trips_through_json(tiny_table, tmp_path):
    _, table = tiny_table
    table.save(tmp_path / "options.json")
    again = OptionTable.load(tmp_path / "options.json")
    o = named(again, ["keep", "kv 1/2 + mlp 3/4"])[1]
    assert again.quality(o) == table.quality(o) and again.seconds(o) == table.seconds(o)
    assert again.prefill_seconds(o) == table.prefill_seconds(o)
    assert again.actions(o) == table.actions(o)


def test_a_table_offers_the_levels_it_was_built_with(tiny_table):
    """A table saved with quarter levels (before eighths) offers those, not today's levels."""
    _, table = tiny_table
    data = copy.deepcopy(table.to_dict())
    for b in data["blocks"]:
        b["mlp"]["levels"] = {k: v for k, v in b["mlp"]["levels"].items() if k % 24 == 0}
    old = OptionTable.from_dict(json.loads(json.dumps(data)))
    names = [o.name for o in old.options(1)]
    assert len(names) == 3 * 5 and "mlp 7/8" not in names and "kv 1/2 + mlp 1/4" in names
    assert len(table.options(1)) == 3 * 9
    assert all(old.quality(o) >= 0 and old.seconds(o) >= 0 for o in old.options(1))


def test_a_table_built_again_reuses_the_probe_s_kls_only_on_the_same_data(tiny_table, monkeypatch):
    """Built again with the first table's probe: the same table, without the probe's runs
    (their cost recorded); on other calibration data the reuse is refused."""
    model, table = tiny_table
    calls = []
    real = Probe.measure
    monkeypatch.setattr(Probe, "measure", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = build_table(
        model, tiny_calib(n=16, length=32), progress=False, latency=table.latency, probed=table
    )
    assert not calls and again.blocks == table.blocks
    assert again.cost["probe_reused"] == table.cost
    with pytest.raises(ConfigError, match=r"other data \(block 0 block stream error"):
        build_table(model, tiny_calib(n=16, length=32, seed=2), False, table.latency, probed=table)
    unprobed = OptionTable.from_dict(json.loads(json.dumps(table.to_dict())))
    del unprobed.blocks[3]["kl"]
    monkeypatch.setattr("depthcut.search.library.RollingCache", None)  # refused before the walk
    with pytest.raises(ConfigError, match="no probe's KLs for every block"):
        build_table(model, tiny_calib(n=16, length=32), False, table.latency, probed=unprobed)


def test_the_probe_measures_the_kl_of_the_folded_removal(tiny_table, monkeypatch):
    """Each removal's probed KL equals the KL of a copy of the model with the fold applied
    for real to the writer (the last block's down_proj, or this block's o_proj for an MLP)
    and the unit bypassed, on the probed first batch."""
    model, calib = tiny_table[0], tiny_calib(n=16, length=32)
    folds, transforms = [], DepthHooks.transforms

    def kept(self):
        folds.append(transforms(self))
        return folds[-1]

    monkeypatch.setattr(DepthHooks, "transforms", kept)
    table = build_table(model, calib, progress=False, latency=tiny_table[1].latency)
    batch = next(iter(calib.batches()))
    with torch.no_grad():
        ref = F.log_probs(model(**batch).logits)
    structure = discover_structure(model)
    units = {u.id: u for u in discover_units(model, structure, ("block", "attention", "mlp"))}
    assert sum(t is not None for f in folds for t in f.values()) >= 3  # folds are exercised
    for i, kind in itertools.product(range(4), ("attention", "mlp", "block")):
        work, t = copy.deepcopy(model), folds[i][kind]
        if t is not None:
            layers = work.model.layers
            fold(layers[i].self_attn.o_proj if kind == "mlp" else layers[i - 1].mlp.down_proj, t)
        with torch.no_grad(), bypassed(work, structure, [units[f"{kind}:{i}"]]):
            want = float(F.token_kl(ref, work(**batch).logits)[:, ::STRIDE].mean())
        assert table.blocks[i]["kl"][kind] == pytest.approx(want, rel=1e-4, abs=1e-7), (i, kind)
    # priced per block: removals by their KL, narrower sublayers pro rata of their stream error
    b, per_block = table.blocks[2], table.priced("block")
    assert per_block.quality(table.options(2)[-1]) == b["kl"]["block"]
    half = next(o for o in table.options(2) if o.name == "mlp 1/2")
    share = b["mlp"]["levels"][48]["error"] / b["mlp"]["levels"][0]["error"]
    assert per_block.quality(half) == pytest.approx(b["kl"]["mlp"] * min(share, 1.0))
    assert table.stream_error(half) == b["mlp"]["levels"][48]["error"]


def test_model_wide_pricing_uses_one_rate_per_sublayer(tiny_table):
    """Under ``pricing="model"`` (the default) a narrower level costs its stream error times
    the sums' ratio of the removal KL to the removal error of the blocks the search may change
    (at most its own removal's KL); removals cost their KL under either pricing; a saved table
    does not keep the choice."""
    _, wide = tiny_table
    table, blocks = wide.priced("block"), wide.blocks
    rate = {
        sub: sum(b["kl"][sub] for b in blocks) / sum(b[sub]["levels"][0]["error"] for b in blocks)
        for sub in ("attention", "mlp")
    }
    for i, b in enumerate(blocks):
        for o in table.options(i)[1:-1]:  # neither keep nor the block's removal
            want = 0.0
            for sub, kept in (("attention", o.attention), ("mlp", o.mlp)):
                if kept == 0:
                    want += b["kl"][sub]
                elif kept < b[sub]["size"]:
                    want += min(rate[sub] * b[sub]["levels"][kept]["error"], b["kl"][sub])
            assert wide.quality(o) == pytest.approx(want, rel=1e-12, abs=0), (i, o.name)
        block = table.options(i)[-1]
        assert wide.quality(block) == table.quality(block) == b["kl"]["block"]
    rates = [b["kl"]["mlp"] / b["mlp"]["levels"][0]["error"] for b in blocks]
    assert max(rates) > 1.2 * min(rates)  # so the two pricings differ on this table:
    halves = named(table, ["mlp 1/2"] * 4)
    assert any(wide.quality(o) < 0.95 * table.quality(o) for o in halves)
    assert any(wide.quality(o) > 1.05 * table.quality(o) for o in halves)
    inner = wide.protected(1, 1)  # the rate of the blocks the search may change, 1 and 2
    for sub, kept in (("mlp", 48), ("attention", 1)):
        mid = blocks[1:3]
        rate = sum(b["kl"][sub] for b in mid) / sum(b[sub]["levels"][0]["error"] for b in mid)
        o = next(o for o in inner.options(1) if o.name == f"{'kv' if kept == 1 else sub} 1/2")
        want = min(rate * blocks[1][sub]["levels"][kept]["error"], blocks[1]["kl"][sub])
        assert inner.quality(o) == pytest.approx(want, rel=1e-12, abs=0), sub
        assert inner.quality(o) != pytest.approx(wide.quality(o), rel=1e-3), sub
    assert wide.protected(2, 2)._model_rates == wide._model_rates  # none free: every block
    assert wide.pricing == "model" and "pricing" not in table.to_dict()
    assert OptionTable.from_dict(table.to_dict()).pricing == "model"
    with pytest.raises(ConfigError, match="pricing .layer.: choose one of model, block"):
        table.priced("layer")


def test_protected_blocks_only_keep(tiny_table):
    """``protected(1, 1)`` leaves the first and last block only ``keep``; the solver then
    finds the budget in the others (as the width default's protect_first / protect_last)."""
    _, table = tiny_table
    ends = table.protected(1, 1)
    assert [o.name for o in ends.options(0)] == ["keep"] == [o.name for o in ends.options(3)]
    assert ends.options(1) == table.options(1) and len(table.options(0)) > 1
    free = joint.solve_plans(table, Budgets(params=0.3), k=1)[0]
    plan = joint.solve_plans(ends, Budgets(params=0.3), k=1)[0]
    names = plan.run["search"]["options"]
    assert names[0] == names[3] == "keep" and {a.block for a in plan.actions} <= {1, 2}
    assert {a.block for a in free.actions} & {0, 3}  # unprotected, the solver uses the ends
    with pytest.raises(ConfigError, match=r"protect \(-1, 0\): protect_first/protect_last must"):
        table.protected(-1, 0)


def test_candidates_come_from_each_pricing_in_turn(tiny_table):
    """The search's candidates alternate between the pricings' rankings, the table's own
    first; a choice one ranking already gave is not measured twice, its next one is taken."""
    _, table = tiny_table
    both = joint.portfolio(table)
    assert both == ("model", "block") and joint.portfolio(table.priced("block"))[0] == "block"

    def ranking(pricing, budgets, k=3):
        return [
            p.run["search"]["options"]
            for p in joint.solve_plans(table.priced(pricing), budgets, k=k)
        ]

    def drawn(budgets, k):
        plans = joint.solve_plans(table, budgets, k=k, pricings=both)
        return [(p.run["search"]["pricing"], p.run["search"]["options"]) for p in plans]

    model, block = ranking("model", Budgets(params=0.2)), ranking("block", Budgets(params=0.2))
    # each ranking's second is the other's first: both are skipped, the model's third is next
    assert model[0] != block[0] and model[1] == block[0] and block[1] == model[0]
    want = [("model", model[0]), ("block", block[0]), ("model", model[2])]
    assert drawn(Budgets(params=0.2), 3) == want
    model, block = ranking("model", Budgets(params=0.4)), ranking("block", Budgets(params=0.4))
    assert model[0] == block[0]  # the same best choice: the block ranking's second comes next
    assert drawn(Budgets(params=0.4), 3) == [
        ("model", model[0]),
        ("model", model[1]),
        ("block", block[1]),
    ]
    for plan in joint.solve_plans(table, Budgets(params=0.2), k=2, pricings=both):
        priced = table.priced(plan.run["search"]["pricing"])  # costed as it was ranked
        chosen = named(table, plan.run["search"]["options"])
        want = sum(map(priced.quality, chosen))
        assert plan.run["search"]["predicted_cost"] == pytest.approx(want, rel=1e-12)


def test_held_back_scores_of_the_dense_model(tiny_table):
    """The dense model against its own reference: KL 0, and the perplexity of the reference."""
    model, calib = tiny_table[0], tiny_calib(n=16, length=32)
    kept, again = joint.Reference(model, calib, keep=True), joint.Reference(model, calib, False)
    assert len(kept.kept) == 16 and again.kept is None  # one sequence at a time
    assert joint._log_prob_bytes(model, calib) == sum(logp.nbytes for logp in kept.kept)
    kl, ppl = joint.held_back_scores(model, again)
    assert kl == pytest.approx(0.0, abs=1e-6)
    assert ppl == pytest.approx(joint.dense_perplexity(kept), rel=1e-6) and ppl > 1.0
    whole = [joint.F.log_probs(model(**b).logits) for b in calib.batches()]
    rows = [logp for _, logp in kept.rows()]
    torch.testing.assert_close(torch.cat(rows), torch.cat(whole), rtol=1e-5, atol=1e-5)


def test_the_search_checks_on_the_held_back_windows_and_their_copies(tiny_table, monkeypatch):
    """The check's KL is the token-weighted mean of the KL on the held-back windows and on
    their copying probes, which measure something else; the search records its check."""
    model, table = tiny_table
    calib = tiny_calib(n=8, length=32)
    pruned = apply_plan(
        model,
        joint.assemble(
            table, named(table, ["keep", "attention", "keep", "keep"]), Budgets(params=0.01)
        ),
    )
    both = joint.held_back_scores(pruned, joint.reference(model, calib, copies=True))[0]
    text = joint.held_back_scores(pruned, joint.reference(model, calib))[0]
    copies = joint.held_back_scores(pruned, joint.reference(model, copying_windows(calib)))[0]
    n_text, n_copies = 8 * 32, 8 * (1 + 2 * 15)
    assert both == pytest.approx((text * n_text + copies * n_copies) / (n_text + n_copies))
    assert abs(copies - text) > 0.01 * text > 0

    def fake(model, plan, calib, ref, runtime):
        predicted = plan.run["latency"]["removed"] / plan.run["latency"]["total"]
        return {"kl": predicted, "saved": predicted, "predicted": predicted}

    monkeypatch.setattr(joint, "measure", fake)
    plan, _ = joint.search(model, table, Budgets(latency=0.2), calib, calib, k=1)
    assert plan.run["search"]["check"] == "text + copies"
    plan, _ = joint.search(model, table, Budgets(latency=0.2), calib, calib, k=1, copies=False)
    assert plan.run["search"]["check"] == "text"


def test_search_corrects_the_prediction_by_what_it_measures(tiny_table, monkeypatch):
    """The measured saving is half the predicted one: round 0 misses the budget, round 1
    solves with the savings halved and lands."""
    model, table = tiny_table
    calib = tiny_calib(n=16, length=32)

    def fake(model, plan, calib, ref, runtime):
        predicted = plan.run["latency"]["removed"] / plan.run["latency"]["total"]
        return {"kl": predicted, "saved": predicted / 2, "predicted": predicted}

    monkeypatch.setattr(joint, "measure", fake)
    plan, rounds = joint.search(
        model, table, Budgets(latency=0.2), calib, calib, k=2, ref=joint.reference(model, calib)
    )
    assert [r["scale"] for r in rounds] == [1.0, 0.5]
    assert all(c["saved"] < 0.19 for c in rounds[0]["candidates"])
    measured = plan.run["search"]["measured"]
    assert measured["saved"] >= 0.19 and measured["predicted"] >= 0.38
    assert isinstance(plan, Plan) and plan.run["config"]["repair"] == "ls"


def test_the_frontier_benchmark_records_every_candidate_of_the_report(tiny_table, monkeypatch):
    """``bench_frontier.candidate`` reads the search's report rows: every round's candidates,
    with their round, pricing, held-back scores and time savings."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_frontier

    model, table = tiny_table
    calib = tiny_calib(n=16, length=32)

    def fake(model, plan, calib, ref, runtime):
        predicted = plan.run["latency"]["removed"] / plan.run["latency"]["total"]
        return {"kl": predicted, "ppl": 2.0, "saved": predicted / 2, "predicted": predicted}

    monkeypatch.setattr(joint, "measure", fake)
    _, rounds = joint.search(
        model, table, Budgets(latency=0.2), calib, calib, k=2, ref=joint.reference(model, calib)
    )
    rows = [bench_frontier.candidate(r["round"], c) for r in rounds for c in r["candidates"]]
    assert [(r["round"], r["pricing"]) for r in rows] == [(0, "model")] * 2 + [(1, "model")] * 2
    for row, c in zip(rows, [c for r in rounds for c in r["candidates"]]):
        assert row["saved"] == c["predicted"] / 2 and row["kl"] == c["predicted"]
        assert row["chose"] == bench_frontier.summary(c["options"])


def test_units_auto_prunes_through_the_joint_search():
    import depthcut as dc

    model = tiny_llama(layers=4, intermediate_size=96)
    cfg = dc.PruneConfig(units="auto", budget=dc.Budget(params=0.2, mode="at_least"))
    assert cfg.units == ("auto",) and cfg.resolved().repair == "ls"
    assert cfg.width_units == ("head", "neuron") and cfg.depth_units == (
        "block",
        "attention",
        "mlp",
    )
    assert dc.PruneConfig.from_dict(cfg.to_dict()) == cfg
    pruned, plan, scores = dc.prune(model, cfg, tiny_calib(n=16, length=32), progress=False)
    assert count_params(model) - count_params(pruned) == plan.removed_params
    assert plan.fraction("all") >= 0.2 and plan.run["repair"]["method"] == "ls"
    # the walk (4 blocks and a tail per fitting batch) plus the probe on batch 0: the dense
    # reference (4 blocks, 1 tail) and per block i: attention and MLP removed (block i and the
    # 3 − i after it), the block removed (3 − i after it), each with a tail on 1/4 of the tokens
    n = len(held_back(tiny_calib(n=16, length=32))[0].batches())
    block = count_params(model.model.layers[0])
    tail = count_params(model.model.norm) + count_params(model.lm_head)
    runs = 4 * n + 4 + sum(2 * (4 - i) + (3 - i) for i in range(4))
    want = (runs * block + (n + 1 + 3) * tail) / (n * (4 * block + tail))
    assert scores.metric == "joint"
    assert scores.cost["forward_equivalents"] == pytest.approx(want)
    with pytest.raises(ConfigError, match="use dc.prune or dc.frontier, not dc.score"):
        dc.score(model, cfg, tiny_calib())


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(units=("auto", "block")), "cannot be mixed"),
        (dict(units="auto", budget="count"), "give a fraction budget"),
        (dict(units=("neuron",), budget="kv"), "use --units auto"),
    ],
)
def test_auto_configs_are_checked(kw, message):
    import depthcut as dc

    budgets = {"count": dc.Budget(params_count=1000), "kv": dc.Budget(kv=0.3)}
    if "budget" in kw:
        kw = kw | {"budget": budgets[kw["budget"]]}
    with pytest.raises(ConfigError, match=message):
        dc.PruneConfig(**kw)


def test_wide_kv_groups_are_scored_without_the_batched_lu_inverse():
    """Three KV groups of 192 channels (SmolLM2's shape): torch's batched LU inverse fails on
    this CPU build; the Cholesky inverse gives each group's error, checked one by one."""
    from depthcut.methods.width.repaired import _unit_errors

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 576, generator=g, dtype=torch.float64)
    hinv = torch.linalg.inv(x.T @ x)
    w = torch.randn(16, 576, generator=g, dtype=torch.float64)
    idx = torch.arange(576).view(3, 192)
    got = _unit_errors(w, hinv, idx)
    for u in range(3):
        cols = idx[u]
        want = torch.trace(w[:, cols] @ torch.linalg.inv(hinv[cols][:, cols]) @ w[:, cols].T)
        torch.testing.assert_close(got[u], want)


def test_the_solver_s_own_writes_to_the_c_streams_are_silenced(capfd):
    """HiGHS's MIP code sometimes writes diagnostics to file descriptor 1 directly."""
    import os

    from depthcut.search.solve import _silenced

    with _silenced():
        os.write(1, b"transformNewIntegerFeasibleSolution\n")
        os.write(2, b"diagnostic\n")
    os.write(1, b"after\n")
    out, err = capfd.readouterr()
    assert out == "after\n" and err == ""


def test_prefill_budgets_parse_and_go_to_the_joint_search():
    import depthcut as dc

    b = Budgets.parse(["prefill=0.3", "latency=0.2"])
    assert (b.prefill, b.latency, b.label) == (0.3, 0.2, "latency-0.2+prefill-0.3")
    assert Budgets.from_budget(b.to_budget()) == b
    assert dc.Budget.parse("prefill=0.25").prefill == 0.25
    assert dc.PruneConfig(budget=dc.Budget(prefill=0.25)).units == ("auto",)
    with pytest.raises(ConfigError, match="prefill=F is a budget of the joint search"):
        dc.PruneConfig(units=("neuron",), budget=dc.Budget(prefill=0.25))
    with pytest.raises(ConfigError, match=r"budget prefill=1\.0 must be a fraction"):
        dc.Budget(prefill=1.0)


def test_the_table_times_prefill_per_unit_and_per_narrowed_sublayer(tiny_table):
    model, table = tiny_table
    pre = table.latency["prefill"]
    assert pre["context"] == 128  # the prompt is cut to the model's positions
    assert set(pre["units"]) == set(table.latency["units"]) and pre["total"] > 0
    for kind, size in (("attention", 2), ("mlp", 96)):
        ratios = pre["ratios"][kind]
        assert ratios[size] == 1.0 and ratios[0] == 0.0
        assert all(0.0 < r <= 1.0 for k, r in ratios.items() if 0 < k < size)
    keep, gone = table.options(1)[0], table.options(1)[-1]
    assert gone.removes_block and table.prefill_seconds(gone) == 0.0
    assert table.prefill_seconds(keep) == pytest.approx(pre["units"]["block:1"])


def test_replayed_inputs_give_the_module_s_output_in_the_model():
    """The prefill ratios time a sublayer alone on the inputs it received in the model: the
    replay reproduces its output exactly."""
    from depthcut.units.latency import captured_inputs

    model = tiny_llama(layers=2)
    ids = torch.arange(24).view(1, 24) % 100
    paths = ["model.layers.1.self_attn", "model.layers.0.mlp"]
    outputs = {}

    def keep(path):
        def hook(m, a, o):
            outputs[path] = o[0] if isinstance(o, tuple) else o

        return hook

    hooks = [model.get_submodule(p).register_forward_hook(keep(p)) for p in paths]
    inputs = captured_inputs(model, ids, paths)
    for h in hooks:
        h.remove()
    for p in paths:
        args, kwargs = inputs[p]
        with torch.no_grad():
            out = model.get_submodule(p)(*args, **kwargs)
        torch.testing.assert_close(out[0] if isinstance(out, tuple) else out, outputs[p])


def test_a_prefill_budget_is_met_by_the_predicted_prefill_saving(tiny_table):
    _, table = tiny_table
    plans = joint.solve_plans(table, Budgets(prefill=0.3), k=2)
    for plan in plans:
        pre = plan.run["prefill"]
        assert pre["removed"] >= 0.3 * pre["total"] * (1 - 1e-6) and pre["context"] == 128
    without = OptionTable.from_dict(table.to_dict() | {"latency": {**table.latency}})
    del without.latency["prefill"]
    with pytest.raises(ConfigError, match="no prefill timings"):
        joint.solve_plans(without, Budgets(prefill=0.3))


def test_search_corrects_the_prefill_prediction_by_what_it_measures(tiny_table, monkeypatch):
    model, table = tiny_table
    calib = tiny_calib(n=16, length=32)

    def fake(model, plan, calib, ref, runtime):
        pre = plan.run["prefill"]
        predicted = pre["removed"] / pre["total"]
        out = {"kl": predicted, "saved": 0.0, "predicted": 0.0}
        return out | {"prefill_saved": predicted / 2, "prefill_predicted": predicted}

    monkeypatch.setattr(joint, "measure", fake)
    plan, rounds = joint.search(
        model, table, Budgets(prefill=0.2), calib, calib, k=2, ref=joint.reference(model, calib)
    )
    assert [r["prefill_scale"] for r in rounds] == [1.0, 0.5]
    assert plan.run["search"]["measured"]["prefill_saved"] >= 0.19


def test_a_calibration_too_small_for_the_refit_fails_before_any_scoring(monkeypatch):
    """The joint search refits every candidate by ls on the three quarters of the batches it
    does not hold back: too few tokens for the widest MLP is refused before the option table."""
    import depthcut as dc
    from depthcut.search import frontier as frontier_module

    def never(*args, **kwargs):
        raise AssertionError("scored before the calibration was checked")

    monkeypatch.setattr(frontier_module, "build_table", never)
    model = tiny_llama(layers=4, intermediate_size=96)
    with pytest.raises(ConfigError, match="fitting tokens .* for 96 unknowns per output in"):
        dc.frontier(model, tiny_calib(n=8, length=16), ["latency=0.2"], progress=False)


def test_a_frontier_budget_the_options_cannot_meet_fails_before_any_search(tiny_table, monkeypatch):
    """The last of a frontier's budgets out of reach is refused before the first budget's
    search (which refits and times candidates for minutes on a real model)."""
    import depthcut as dc
    from depthcut.search import frontier as frontier_module

    def never(*args, **kwargs):
        raise AssertionError("searched before every budget was checked")

    monkeypatch.setattr(frontier_module, "search", never)
    model, table = tiny_table
    with pytest.raises(BudgetError, match=r"budget kv=0\.99 cannot be met: the options save"):
        dc.frontier(model, tiny_calib(n=16, length=32), ["kv=0.2", "kv=0.99"], table=table)


def test_a_correction_that_leaves_no_feasible_plan_keeps_the_closest_measured(
    tiny_table, monkeypatch
):
    """Timer noise measures every candidate slower than dense: the correction is floored at
    MIN_CORRECTION (not ≤ 0), the savings so scaled cannot reach the budget any more, and the
    search answers with round 0's closest candidate instead of failing."""
    model, table = tiny_table
    calib = tiny_calib(n=16, length=32)

    def slower(model, plan, calib, ref, runtime):
        predicted = plan.run["latency"]["removed"] / plan.run["latency"]["total"]
        return {"kl": predicted, "saved": -0.01, "predicted": predicted}

    monkeypatch.setattr(joint, "measure", slower)
    assert joint._correction([(None, {"saved": -0.01, "predicted": 0.2})]) == joint.MIN_CORRECTION
    plan, rounds = joint.search(
        model, table, Budgets(latency=0.2), calib, calib, k=2, ref=joint.reference(model, calib)
    )
    assert len(rounds) == 1 and plan.run["search"]["measured"]["saved"] == -0.01


def test_search_reprices_narrower_levels_by_what_the_candidates_measured(tiny_table, monkeypatch):
    """Candidates measure their removals' predicted cost plus 6 × their narrower levels':
    round 1 solves with narrower levels priced 6 × (the factor in its report row), measures
    only plans not measured before, and the plan kept is the least measured KL of every
    round's candidates that honour the budget."""
    model, table = tiny_table
    calib = tiny_calib(n=16, length=32)

    def fake(model, plan, calib, ref, runtime):
        s = plan.run["search"]
        narrowed = s["predicted_narrowed"] / s["narrowing"]
        kl = s["predicted_cost"] - s["predicted_narrowed"] + 6.0 * narrowed
        saved = plan.run["latency"]["removed"] / plan.run["latency"]["total"]
        return {"kl": kl, "saved": saved, "predicted": saved}

    monkeypatch.setattr(joint, "measure", fake)
    plan, rounds = joint.search(
        model,
        table,
        Budgets(params=0.3),
        calib,
        calib,
        k=3,
        ref=joint.reference(model, calib),
        reprice=True,
    )
    assert [r["narrowing"] for r in rounds] == [1.0, pytest.approx(6.0)]
    first = [c["options"] for c in rounds[0]["candidates"]]
    assert all(c["options"] not in first for c in rounds[1]["candidates"])
    every = [c for r in rounds for c in r["candidates"]]
    assert plan.run["search"]["measured"]["kl"] == min(c["kl"] for c in every)
    repriced = joint.solve_plans(table.repriced(6.0), Budgets(params=0.3), k=1)[0]
    assert plan.run["search"]["options"] == repriced.run["search"]["options"]
    assert plan.run["search"]["options"] not in first  # the repricing found a better plan
    _, once = joint.search(
        model, table, Budgets(params=0.3), calib, calib, k=3, ref=joint.reference(model, calib)
    )
    assert len(once) == 1  # not the default
