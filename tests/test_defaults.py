"""One default everywhere: PruneConfig(), `depthcut prune`, score → plan → apply and
`depthcut apply` give the same model; old recipes replay with the defaults they were made
under; `depthcut compare` puts runs side by side."""

import json

import pytest
import torch
from safetensors.torch import load_file

import depthcut as dc
from depthcut.cli.commands import make_config
from depthcut.cli.parser import build_parser
from depthcut.recipe import Recipe
from support import run
from tiny import tiny_calib, tiny_llama, words


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "text.txt"
    path.write_text("\n\n".join(words(200, seed=s) for s in range(10)))
    return path


def test_the_cli_default_is_the_library_default():
    args = build_parser().parse_args(["prune", "m", "--out", "o"])
    assert make_config(args) == dc.PruneConfig()
    cfg = dc.PruneConfig().resolved()
    assert (cfg.units, cfg.width_importance, cfg.repair) == (("neuron",), "ls", "ls")
    named = build_parser().parse_args(["prune", "m", "--out", "o", "--importance", "angular"])
    assert make_config(named) == dc.PruneConfig(importance="angular")
    assert dc.PruneConfig(importance="angular").units == ("block",)
    assert dc.PruneConfig(heads=0.3).units == ("head",)
    assert dc.PruneConfig(units=("block",)).resolved().repair == "none"
    assert dc.PruneConfig().resolved(steps=2).repair == "none"  # prune → recover loops
    assert dc.PruneConfig().resolved(streamed=True).repair == "none"


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_prune_equals_score_plan_apply_with_its_repair():
    model, calib = tiny_llama(layers=6), tiny_calib()
    cfg = dc.PruneConfig(budget=dc.Budget(params=0.25, count="non_embedding"))
    pruned, the_plan, _ = dc.prune(model, cfg, calib, progress=False)
    staged = dc.plan(dc.score(model, cfg, calib, progress=False), cfg, model)
    assert staged.run["config"]["repair"] == "ls" and the_plan.run["config"] == staged.run["config"]
    ids = torch.randint(3, 90, (2, 11), generator=torch.Generator().manual_seed(3))
    repaired = dc.apply(model, staged, calib, progress=False)
    torch.testing.assert_close(logits(repaired, ids), logits(pruned, ids))
    assert staged.run["repair"]["width"]["kept"]  # the refit changed weights…
    unrepaired = dc.apply(model, staged)  # …which apply without calibration does not do
    assert not torch.allclose(logits(unrepaired, ids), logits(pruned, ids))


def test_cli_apply_of_a_prune_plan_gives_the_pruned_model(capsys, tmp_path, tiny_dir, text_file):
    calib = ["--calib", text_file, "--n-samples", "8", "--seq-len", "32"]
    run_dir, applied = tmp_path / "run", tmp_path / "applied"
    code, _, err = run(capsys, "prune", tiny_dir, "--out", run_dir, *calib)
    assert code == 0, err
    code, _, err = run(capsys, "apply", tiny_dir, run_dir / "plan.json", "--out", applied, *calib)
    assert code == 0, err
    a, b = (load_file(d / "model.safetensors") for d in (run_dir, applied))
    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)
    code, _, err = run(capsys, "apply", tiny_dir, run_dir / "plan.json", "--out", tmp_path / "n")
    assert code == 0, err  # --repair auto from the plan, sized calibration of the default text
    code, stdout, _ = run(capsys, "compare", run_dir)
    assert "| run | method |" in stdout and "| run | neuron by ls, ls repair |" in stdout


def test_compare_names_each_method_and_refuses_a_non_run(capsys, tmp_path, tiny_dir, text_file):
    calib = ["--calib", text_file, "--n-samples", "8", "--seq-len", "32", "--perplexity"]
    blocks = tmp_path / "blocks"
    argv = ["prune", tiny_dir, "--out", blocks, "--units", "block", *calib]
    assert run(capsys, *argv)[0] == 0
    code, stdout, _ = run(capsys, "compare", blocks)
    row = stdout.strip().splitlines()[-1]
    report = json.loads((blocks / "report.json").read_text())
    removed = report["plan"]["removed_params"] / report["plan"]["model"]["params_all"]
    before, after = (report[k]["perplexity"]["perplexity"] for k in ("before", "after"))
    assert row == f"| blocks | block by bi | {removed:.1%} | {before:.2f} → {after:.2f} |  |"
    code, _, err = run(capsys, "compare", blocks, tmp_path)
    assert code == 2 and err.strip().endswith("report.json: no such depthcut prune report file")


V1_RECIPE = {
    "version": 1,
    "steps": 1,
    "recover": None,
    "quantize": None,
    "prune": {"version": 1, "budget": {"params": 0.3}, "neurons": 0.0},
}


def test_an_old_recipe_replays_with_the_defaults_it_was_made_under(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(V1_RECIPE))
    cfg = Recipe.load(path).prune
    assert (cfg.units, cfg.importance, cfg.width_importance, cfg.repair) == (
        ("block",),
        "bi",
        "magnitude",
        "none",
    )
    full = dc.PruneConfig(units=("neuron",), width_importance="taylor", repair="ls").to_dict()
    full["version"] = 1  # a version-1 file records every field: each one is kept
    assert dc.PruneConfig.from_dict(full) == dc.PruneConfig(
        units=("neuron",), width_importance="taylor", repair="ls"
    )
    assert Recipe.from_dict(Recipe(dc.PruneConfig()).to_dict()).prune == dc.PruneConfig()
