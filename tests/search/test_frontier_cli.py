"""``depthcut frontier``: one option table, a plan per budget point, reused tables, plans that
``depthcut apply`` realises; bad budgets and foreign tables refused before any work."""

import json
import re

import pytest

from depthcut.planning.plan import Plan
from depthcut.search import frontier as frontier_module
from support import run

CALIB = ("--n-samples", "16", "--seq-len", "32", "--batch-size", "4")


@pytest.fixture(scope="module")
def frontier_out(tiny_dir, pattern_file, tmp_path_factory):
    from depthcut.cli import main

    out = tmp_path_factory.mktemp("f") / "frontier"
    argv = ["frontier", tiny_dir, "--budgets", "params=0.2,params=0.15+kv=0.2", "--k", "2"]
    argv += ["--calib", pattern_file, *CALIB, "--out", out]
    assert main([str(a) for a in argv]) == 0
    return out


def test_frontier_writes_a_plan_per_point(frontier_out):
    names = sorted(p.name for p in (frontier_out / "plans").iterdir())
    assert names == ["kv-0.2+params-0.15.json", "params-0.2.json"]
    points = json.loads((frontier_out / "frontier.json").read_text())["points"]
    assert set(points) == {"params-0.2", "kv-0.2+params-0.15"}
    both = Plan.load(frontier_out / "plans" / "kv-0.2+params-0.15.json")
    assert both.fraction("all") >= 0.15 - 1e-9  # an at_least parameter budget is exact
    assert both.run["search"]["budgets"]["kv"] == 0.2
    groups = {"block": 2, "attention": 2}  # KV groups a removal takes (2 per tiny block)
    gone = sum(len(a.members) if a.kind == "head" else groups.get(a.kind, 0) for a in both.actions)
    assert gone >= 0.2 * 12  # at least a fifth of the 12 KV groups (the kv budget)
    assert len(both.run["search"]["options"]) == 6 and (frontier_out / "options.json").exists()
    measured = points["params-0.2"]["measured"]
    assert measured["ppl"] > 1.0 and points["params-0.2"]["dense_ppl"] > 1.0
    assert (frontier_out / "frontier.png").read_bytes()[:4] == b"\x89PNG"


def test_a_frontier_plan_applies_with_its_repair(
    frontier_out, tiny_dir, pattern_file, tmp_path, capsys
):
    plan = frontier_out / "plans" / "params-0.2.json"
    args = ["apply", tiny_dir, plan, "--out", tmp_path / "o", "--calib", pattern_file, *CALIB]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    saved = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert saved["run"]["repair"]["method"] == "ls"
    assert saved["actions"] == json.loads(plan.read_text())["actions"]


def test_a_saved_table_is_reused_not_rebuilt(
    frontier_out, tiny_dir, pattern_file, tmp_path, capsys, monkeypatch
):
    def refuse(*a, **k):
        raise AssertionError("the option table was built again")

    monkeypatch.setattr(frontier_module, "build_table", refuse)
    table = frontier_out / "options.json"
    code, out, _ = run(
        capsys,
        "frontier",
        tiny_dir,
        "--budgets",
        "params=0.3",
        "--table",
        table,
        "--calib",
        pattern_file,
        *CALIB,
        "--out",
        tmp_path / "again",
        "--k",
        "1",
    )
    assert code == 0 and "params-0.3:" in out


@pytest.mark.parametrize(
    ("budgets", "message"),
    [
        ("latency=0.2,latency=0.2", "names a point twice"),
        ("speed=0.2", r"use latency=F, prefill=F, kv=F or params=F\[:non_embedding\]"),
        ("latency=0.2+latency=0.3", "budget latency given twice"),
        ("kv=1.0", r"budget kv=1.0 must be a fraction in \(0, 1\)"),
    ],
)
def test_bad_budgets_are_refused_before_any_work(budgets, message, tiny_dir, tmp_path, capsys):
    code, _, err = run(capsys, "frontier", tiny_dir, "--budgets", budgets, "--out", tmp_path / "x")
    assert code == 2 and err.count("\n") == 1
    assert re.search(message, err)
    assert not list(tmp_path.iterdir())


def test_negative_protection_is_refused_before_any_work(tiny_dir, tmp_path, capsys):
    argv = ["--budgets", "latency=0.2", "--protect-last", "-1", "--out", tmp_path / "x"]
    code, _, err = run(capsys, "frontier", tiny_dir, *argv)
    assert code == 2 and err.count("\n") == 1
    assert "--protect-first 1 --protect-last -1: give counts of blocks >= 0" in err
    assert not list(tmp_path.iterdir())


def test_a_table_of_another_model_is_refused(frontier_out, tmp_path, pattern_file, capsys):
    from tiny import save_tiny, tiny_llama

    other = tmp_path / "other"
    save_tiny(other, lambda: tiny_llama(layers=4))
    table = frontier_out / "options.json"
    code, _, err = run(
        capsys,
        "frontier",
        other,
        "--budgets",
        "params=0.2",
        "--table",
        table,
        "--calib",
        pattern_file,
        *CALIB,
        "--out",
        tmp_path / "x",
    )
    assert code == 2 and "made for another model (num_blocks 6, this model 4)" in err
    assert not (tmp_path / "x").exists()


def test_prune_units_auto_runs_the_joint_search(tiny_dir, pattern_file, tmp_path, capsys):
    import depthcut as dc

    assert dc.PruneConfig(budget=dc.Budget(latency=0.2)).units == ("auto",)  # units omitted
    assert dc.PruneConfig(budget=dc.Budget(kv=0.2)).units == ("auto",)
    args = ["prune", tiny_dir, "--units", "auto", "--budget", "params=0.2", "--calib"]
    code, out, err = run(capsys, *args, pattern_file, *CALIB, "--out", tmp_path / "r")
    assert code == 0, err
    plan = json.loads((tmp_path / "r" / "plan.json").read_text())
    assert plan["run"]["config"]["units"] == ["auto"] and plan["run"]["repair"]["method"] == "ls"
    assert plan["removed_params"] >= 0.2 * plan["model"]["params_all"]
    assert len(plan["run"]["search"]["options"]) == 6
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## Chosen option per block (joint search)" in report
    assert (tmp_path / "r" / "options.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run(capsys, *args, pattern_file, "--steps", "2", "--out", tmp_path / "s")
    assert code == 2 and "--units auto prunes once" in err


def test_prune_meets_several_budgets_at_once(tiny_dir, pattern_file, tmp_path, capsys):
    """Two --budget flags and no --units: the joint search meets both."""
    args = ["prune", tiny_dir, "--budget", "params=0.2", "--budget", "kv=0.3", "--calib"]
    code, _, err = run(capsys, *args, pattern_file, *CALIB, "--out", tmp_path / "r")
    assert code == 0, err
    plan = json.loads((tmp_path / "r" / "plan.json").read_text())
    budget = plan["run"]["config"]["budget"]
    assert (budget["params"], budget["kv"], plan["run"]["config"]["units"]) == (0.2, 0.3, ["auto"])
    assert plan["removed_params"] >= 0.2 * plan["model"]["params_all"]
    groups = 0  # KV groups removed, of 6 blocks × 2
    for action in plan["actions"]:
        if action["kind"] in ("block", "attention"):
            groups += 2
        elif action["kind"] == "head":
            groups += len(action["indices"])
    assert groups >= 0.3 * 12


@pytest.mark.parametrize(
    ("budgets", "message"),
    [
        (["params=0.2", "count=5000"], "--budget params given twice"),
        (["kv=0.2", "kv=0.3"], "--budget kv given twice"),
        (["count=5000", "kv=0.3"], "params_count alone"),
    ],
)
def test_several_budgets_are_checked(budgets, message, tiny_dir, tmp_path, capsys):
    flags = [x for b in budgets for x in ("--budget", b)]
    code, _, err = run(capsys, "prune", tiny_dir, *flags, "--out", tmp_path / "x")
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not list(tmp_path.iterdir())


def test_several_budgets_need_the_joint_search():
    import depthcut as dc
    from depthcut.errors import ConfigError

    with pytest.raises(ConfigError, match="several budgets at once are met by the joint"):
        dc.PruneConfig(units=("neuron",), budget=dc.Budget(params=0.2, latency=0.2))
    assert dc.PruneConfig(budget=dc.Budget(params=0.2, latency=0.2)).units == ("auto",)


def test_the_report_draws_each_block_s_option():
    from depthcut.report.structure import joint_markdown, joint_structure

    options = ["keep", "block", "kv 2/3 + mlp 1/2", "attention", "mlp 3/4", "mlp"]
    plan = Plan([], {"num_blocks": 6}, {"search": {"options": options}})
    data = joint_structure(plan)
    assert data["kept"] == [[1, 0, 2 / 3, 0, 1, 1], [1, 0, 0.5, 1, 0.75, 0]]
    assert data["labels"][1] == ["·", "x", "1/2", "·", "3/4", "x"]
    assert "| attention | · | x | 2/3 | x | · | · |" in joint_markdown(data)
    assert joint_structure(Plan([], {"num_blocks": 6}, {})) is None
