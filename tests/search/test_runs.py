"""Options the repair cannot take are left out (Gemma3's post-norms), and runs of removed
blocks priced as one: their fold statistics against the hidden states, their probed KL
against the fold applied for real, and the solver keeping each run whole and apart."""

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from depthcut.graph.structure import discover_structure
from depthcut.importance import functional as F
from depthcut.refit.ls import DEPTH_RIDGES, fold
from depthcut.report.structure import joint_structure
from depthcut.search import joint
from depthcut.search.budgets import Budgets
from depthcut.search.library import OptionTable, build_table
from depthcut.search.probe import STRIDE
from depthcut.search.quality import fit_transform
from depthcut.search.runs import RunStart
from depthcut.units.bypass import bypassed
from depthcut.units.discover import discover_units

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import tiny_calib, tiny_gemma3, tiny_llama  # noqa: E402

LONGEST = 3


def test_gemma3_removals_the_repair_cannot_fold_are_left_out():
    """Behind Gemma3's post-norms no removal can be folded: the table offers none (but the
    first block's attention and the whole first block, which have no writer before them and
    are left unrepaired), says why, and a plan it gives is repaired and applied."""
    model = tiny_gemma3(layers=4)
    calib = tiny_calib(n=16, length=32)
    table = build_table(model, calib, progress=False)
    assert set(table.blocks[0]["refused"]) == {"mlp"}
    for i in range(1, 4):
        assert set(table.blocks[i]["refused"]) == {"attention", "mlp", "block"}
        assert "mlp:0 writes into the residual stream through a norm" in str(
            table.blocks[1]["refused"]
        )
        assert all(o.attention and o.mlp for o in table.options(i))
    first = {o.name for o in table.options(0)}
    assert {"attention", "block"} <= first and "mlp" not in first
    plan = joint.solve_plans(table.protected(1, 0), Budgets(params=0.2), k=1)[0]
    assert plan.run["search"]["left_out"][0].startswith("mlp removal left out in blocks 0, 1")
    pruned = joint.realise(model, plan, calib)  # the ls repair takes every chosen option
    assert pruned.config.num_hidden_layers == 4


@pytest.fixture(scope="module")
def run_table():
    model = tiny_llama(layers=5, intermediate_size=96)
    calib = tiny_calib(n=16, length=32)
    starts: list = []
    real = RunStart.transform

    def kept(self, length):
        """The run's fold, forced (on this tiny model no run's fold beats no fold on the probed
        batch, so the real choice is None: checked below), for the KL test to apply it."""
        chosen = real(self, length)
        t = fit_transform(self.a, self.fits[length], DEPTH_RIDGES[-1])
        starts.append((self, length, chosen, t))
        return t, chosen[1]

    RunStart.transform = kept
    try:
        table = build_table(model, calib, progress=False, longest_run=LONGEST)
    finally:
        RunStart.transform = real
    return model, calib, table, starts


def _hidden_and_writer(model, calib, start: int):
    """Per batch: every block input / the last output, and block start − 1's down_proj output."""
    out = []
    for batch in calib.batches():
        written: list[torch.Tensor] = []
        writer = model.model.layers[start - 1].mlp.down_proj
        hook = writer.register_forward_hook(lambda m, a, o, kept=written: kept.append(o))
        with torch.no_grad():
            hs = model(**batch, output_hidden_states=True).hidden_states
        hook.remove()
        out.append((hs, written[0]))
    return out


def test_runs_are_priced_from_block_1_up_to_the_longest(run_table):
    _, _, table, _ = run_table
    assert "runs" not in table.blocks[0]  # no writer before it
    for i in range(1, 5):
        want = [n for n in range(2, LONGEST + 1) if i + n <= 5]
        assert sorted(table.blocks[i].get("runs", {})) == want
    assert table.longest_run == LONGEST
    names = [o.name for o in table.runs(2)]
    assert names == ["run of 2", "run of 3", "run of 2", "run of 3"]  # from block 1, then 2
    assert [o.run for o in table.runs(2)] == [(1, 2), (1, 3), (2, 2), (2, 3)]
    first = next(o for o in table.runs(2) if o.run == (2, 3))
    assert table.quality(first) == table.blocks[2]["runs"][3]["kl"] > 0
    inside = next(o for o in table.runs(3) if o.run == (2, 3))
    assert table.quality(inside) == 0.0
    assert table.params(inside) == table.blocks[3]["block"]["params"]
    inner = [o for o in table.runs(2) if o.run[0] == 2 and sum(o.run) <= 4]
    assert table.protected(2, 1).runs(2) == inner


def test_run_fold_statistics_are_those_of_the_hidden_states(run_table):
    """A = Σ Mᵀ D M and B = Σ Mᵀ D (M + h_end+1 − h_start) over the batches not probed (M:
    block start − 1's down_proj output, D: 1 / mean(h_start²) per token); the fold chosen is
    none where no ridge's fit beats it on the probed batch (every run of this tiny model)."""
    model, calib, _, starts = run_table
    start, length, chosen, _ = next(r for r in starts if (r[0].block, r[1]) == (1, 3))
    a = b = 0
    for k, (hs, m) in enumerate(_hidden_and_writer(model, calib, 1)):
        if k == 0:
            continue  # the probed batch checks the fit
        x, y = hs[1].double().flatten(0, 1), hs[4].double().flatten(0, 1)
        m = m.double().flatten(0, 1)
        md = m / x.pow(2).mean(-1, keepdim=True)
        a, b = a + md.T @ m, b + md.T @ (m + y - x)
    torch.testing.assert_close(start.a, a, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(start.fits[length], b, rtol=1e-9, atol=1e-9)
    check, eye = start.checks[length], torch.eye(32, dtype=torch.float64)
    fitted = [check.error_of(fit_transform(a, b, r)) for r in DEPTH_RIDGES]
    assert min(fitted) > check.error_of(eye) and chosen[0] is None
    assert chosen[1] == pytest.approx(check.error_of(eye) / check.n)
    assert len(starts) == 5 and all(c[0] is None for _, _, c, _ in starts)


def test_a_run_s_probed_kl_is_that_of_the_folded_run(run_table):
    """Each run's KL equals that of a copy of the model with the run's fold applied for real
    to block start − 1's down_proj and the run's blocks bypassed, on the probed batch."""
    model, calib, table, starts = run_table
    batch = next(iter(calib.batches()))
    with torch.no_grad():
        ref = F.log_probs(model(**batch).logits)
    structure = discover_structure(model)
    units = {u.id: u for u in discover_units(model, structure, ("block",))}
    for start, length, _, t in starts:
        work, i = copy.deepcopy(model), start.block
        fold(work.model.layers[i - 1].mlp.down_proj, t)
        gone = [units[f"block:{j}"] for j in range(i, i + length)]
        with torch.no_grad(), bypassed(work, structure, gone):
            want = float(F.token_kl(ref, work(**batch).logits)[:, ::STRIDE].mean())
        assert table.blocks[i]["runs"][length]["kl"] == pytest.approx(want, rel=1e-4, abs=1e-7)


def _removals(names: list[str]) -> list[tuple[int, int]]:
    """(first block, length) of every maximal stretch of removed blocks in a plan."""
    out, i = [], 0
    while i < len(names):
        if names[i] == "block" or names[i].startswith("run of "):
            j = i
            while j + 1 < len(names) and names[j + 1].startswith(("block", "run of ")):
                j += 1
            out.append((i, j - i + 1))
            i = j + 1
        else:
            i += 1
    return out


def test_the_solver_keeps_runs_whole_and_apart(run_table):
    """A run the table prices free is chosen whole; no removal touches another unless both are
    in one run, so every stretch of removed blocks is one priced run or one block; the
    predicted cost is the run's KL once; the repair folds the run as one."""
    model, calib, table, _ = run_table
    cheap = OptionTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert cheap.runs(3) == table.runs(3) and cheap.longest_run == LONGEST  # JSON round trip
    for b in cheap.blocks:  # everything else costs: the free run is the cheapest way
        b["kl"] = {k: v + 10.0 for k, v in b["kl"].items()}
        for run in b.get("runs", {}).values():
            run["kl"] += 10.0
    cheap.blocks[2]["runs"][2]["kl"] = 0.0
    two = 2 * cheap.blocks[2]["block"]["params"] / cheap.model["params_non_embedding"]
    plan = joint.solve_plans(cheap, Budgets(params=0.95 * two), k=1)[0]
    names = plan.run["search"]["options"]
    assert names[2:4] == ["run of 2", "run of 2"] and _removals(names) == [(2, 2)]
    cheap.blocks[2]["runs"][2]["kl"] = 10.0
    cheap.blocks[2]["kl"]["block"] = cheap.blocks[3]["kl"]["block"] = 0.0
    names = joint.solve_plans(cheap, Budgets(params=0.95 * two), k=1)[0].run["search"]["options"]
    assert names[2:4] != ["block", "block"] and all(n == 1 for _, n in _removals(names))
    for budget in (0.2, 0.35, 0.5):
        for plan in joint.solve_plans(table, Budgets(params=budget), k=3):
            names = plan.run["search"]["options"]
            for first, length in _removals(names):
                assert length == 1 and names[first] == "block" or names[first] == f"run of {length}"
    pruned = joint.realise(model, plan, calib)
    assert pruned is not None
    data = joint_structure(plan)
    assert data is not None


def test_a_run_member_shows_as_a_removed_block():
    plan = joint.Plan([], {}, {"search": {"options": ["keep", "run of 2", "run of 2"]}})
    data = joint_structure(plan)
    assert data["labels"] == [["·", "x", "x"], ["·", "x", "x"]]
