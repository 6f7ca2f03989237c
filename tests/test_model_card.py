"""Every saved run carries a Hugging Face model card (README.md) whose numbers are the run's."""

import json

import yaml

import depthcut as dc
from depthcut.planning.plan import Plan
from support import prune_args, run
from tiny import tiny_llama, words


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_card_of_a_prune_run_parses_and_its_numbers_are_the_runs(capsys, tmp_path, tiny_dir):
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(words(200, seed=s) for s in range(8)))
    out = tmp_path / "small"
    code, _, err = run(
        capsys, *prune_args(tiny_dir, out, text, "--perplexity", "--eval-text", text)
    )
    assert code == 0, err
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["tags"] == ["depthcut", "pruned"] and meta["library_name"] == "depthcut"
    assert meta["pipeline_tag"] == "text-generation" and meta["base_model"] == str(tiny_dir)
    report = json.loads((out / "report.json").read_text())
    (result,) = meta["model-index"][0]["results"]
    (ppl,) = result["metrics"]
    assert ppl["type"] == "perplexity" and meta["model-index"][0]["name"] == "small"
    assert ppl["value"] == report["after"]["perplexity"]["perplexity"]  # the same number
    plan = Plan.load(out / "plan.json")
    removed = f"{plan.removed_params:,} of {plan.model['params_all']:,} parameters removed"
    assert removed in card and "repair ls" in card
    before = report["before"]["perplexity"]["perplexity"]
    assert before != ppl["value"] and f"| perplexity | {before:.3f} | {ppl['value']:.3f} |" in card


def test_a_library_save_without_evaluation_has_a_card_without_results(tmp_path):
    model = tiny_llama(layers=4)
    plan = dc.plan_units(model, ["block:1"])
    out = dc.save(dc.apply(model, plan), plan, tmp_path / "lib")
    meta = front_matter((out / "README.md").read_text())
    assert "model-index" not in meta and "base_model" not in meta
    assert "## Measured" not in (out / "README.md").read_text()
