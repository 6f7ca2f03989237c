import json

import pytest
import torch

from depthcut.cli import build_parser, main
from support import prune_args, run
from tiny import save_tiny, words


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "text.txt"
    path.write_text("\n\n".join(words(200, seed=s) for s in range(10)))
    return path


def test_prune_writes_complete_dir_and_eval_compares(capsys, tmp_path, tiny_dir, text_file):
    out = tmp_path / "pruned"
    code, stdout, _ = run(
        capsys,
        *prune_args(
            tiny_dir, out, text_file, "--units", "block,attention,mlp", "--importance", "kl"
        ),
    )
    assert code == 0, stdout
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "plan.json",
        "scores.json",
        "report.json",
        "report.md",
        "importance.png",
        "depthcut.json",
        "tokenizer.json",
    } <= names
    assert (out / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert report["after"]["params_all"] < report["before"]["params_all"]
    code, stdout, _ = run(capsys, "inspect", out)
    assert code == 0 and "blocks:" in stdout


def test_prune_heads_and_neurons(capsys, tmp_path, tiny_dir, text_file):
    out = tmp_path / "w"
    code, stdout, _ = run(
        capsys,
        *prune_args(
            tiny_dir,
            out,
            text_file,
            "--units",
            "block,head,neuron",
            "--heads",
            "0.15",
            "--neurons",
            "0.3",
            "--width-importance",
            "activation_frequency",
        ),
    )
    assert code == 0 and "head:" in stdout and "neuron:" in stdout
    plan = json.loads((out / "plan.json").read_text())
    assert {a["kind"] for a in plan["actions"]} == {"block", "head", "neuron"}


def test_score_plan_apply_verbs(capsys, tmp_path, tiny_dir, text_file):
    scores, plan = tmp_path / "s.json", tmp_path / "p.json"
    assert (
        run(
            capsys,
            "score",
            tiny_dir,
            "--calib",
            text_file,
            "--n-samples",
            "4",
            "--seq-len",
            "32",
            "--out",
            scores,
        )[0]
        == 0
    )
    code, stdout, _ = run(capsys, "plan", scores, "--budget", "params=0.3", "--out", plan)
    assert code == 0 and "removed" in stdout
    applied = run(capsys, "apply", tiny_dir, plan, "--calib", text_file, "--out", tmp_path / "a")
    assert applied[0] == 0
    assert json.loads(plan.read_text())["removed_params"] > 0


@pytest.mark.parametrize(
    ("extra", "units", "width", "repair"),
    [
        ([], {"neuron"}, "ls", "ls"),  # the recommended method
        (["--importance", "angular"], {"block"}, "magnitude", "none"),  # a depth metric named
        (["--heads", "0.3"], {"head"}, "ls", "ls"),  # a width fraction named
        (["--units", "neuron", "--repair", "none"], {"neuron"}, "ls", "none"),
        (["--units", "fine"], {"fine"}, None, "ls"),  # the fine refit measured helping
    ],
)
def test_defaults_run_the_recommended_method(
    capsys, tmp_path, tiny_dir, text_file, extra, units, width, repair
):
    out = tmp_path / "d"
    argv = prune_args(tiny_dir, out, text_file, "--budget", "params=0.2:non_embedding", *extra)
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    plan = json.loads((out / "plan.json").read_text())
    config = plan["run"]["config"]
    assert set(config["units"]) == units and config["repair"] == repair
    assert {a["kind"] for a in plan["actions"]} == units
    if width is not None and units != {"block"}:
        assert config["width_importance"] == width
        scores = json.loads((out / "scores.json").read_text())
        assert {v["metric"] for v in scores["width"].values()} == {width}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budget", "params=0"], "fraction in (0, 1)"),
        (["--budget", "params=1"], "fraction in (0, 1)"),
        (
            ["--budget", "params=0.9", "--protect-first", "2", "--protect-last", "2"],
            "budget unreachable",
        ),
        (["--importance", "nope"], "unknown importance"),
        (["--units", "head,neuron", "--neurons", "0.2"], "heads=FRACTION"),
        (["--units", "neuron", "--neurons", "0.3", "--round-to", "999"], "round_to=999"),
        (["--units", "chan"], "units"),
    ],
)
def test_bad_config_is_one_line_error_and_writes_nothing(
    capsys, tmp_path, tiny_dir, text_file, argv, message
):
    out = tmp_path / "o"
    code, _, err = run(capsys, *prune_args(tiny_dir, out, text_file, *argv))
    last = err.strip().splitlines()[-1]
    assert code == 2 and message in last and last.startswith("depthcut: error: ")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_paths_and_models(capsys, tmp_path, text_file, tiny_dir):
    code, _, err = run(capsys, *prune_args(tmp_path / "missing", tmp_path / "o", text_file))
    assert code == 2 and "no such directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, *prune_args(tmp_path / "empty", tmp_path / "o", text_file))
    assert code == 2 and "not a model directory" in err
    from transformers import ViTConfig

    ViTConfig(num_hidden_layers=2).save_pretrained(tmp_path / "vit")
    code, _, err = run(capsys, *prune_args(tmp_path / "vit", tmp_path / "o", text_file))
    assert code == 2 and "'vit' is not a causal language model" in err
    save_tiny(tmp_path / "noweights")
    (tmp_path / "noweights" / "model.safetensors").unlink()
    code, _, err = run(capsys, *prune_args(tmp_path / "noweights", tmp_path / "o", text_file))
    assert code == 2 and "cannot load" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n  ")
    code, _, err = run(capsys, *prune_args(tiny_dir, tmp_path / "o", empty))
    assert code == 2 and "fewer than 2 articles" in err
    assert not (tmp_path / "o").exists()


def test_existing_output_refused_unless_overwrite(capsys, tmp_path, tiny_dir, text_file):
    out = tmp_path / "o"
    out.mkdir()
    code, _, err = run(capsys, *prune_args(tiny_dir, out, text_file))
    assert code == 2 and "--overwrite" in err and list(out.iterdir()) == []
    assert run(capsys, *prune_args(tiny_dir, out, text_file, "--overwrite"))[0] == 0
    assert (out / "plan.json").exists()


def test_input_model_directory_is_never_modified(capsys, tmp_path, tiny_dir, text_file):
    before = {p.name: p.read_bytes() for p in tiny_dir.iterdir()}
    assert run(capsys, *prune_args(tiny_dir, tmp_path / "o", text_file))[0] == 0
    assert {p.name: p.read_bytes() for p in tiny_dir.iterdir()} == before


VERBS = sorted(build_parser()._subparsers._group_actions[0].choices)


def test_the_fifteen_verbs():
    assert (
        sorted(
            [
                "inspect",
                "frontier",
                "compare",
                "score",
                "plan",
                "apply",
                "prune",
                "recover",
                "quantize",
                "export",
                "sweep",
                "explain",
                "report",
                "eval",
                "bench",
            ]
        )
        == VERBS
    )


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(capsys, verb):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0 and "usage: depthcut" in capsys.readouterr().out


def test_eval_before_after_table(capsys, tmp_path, tiny_dir, text_file, monkeypatch):
    from depthcut import data

    monkeypatch.setattr(data, "text_split", lambda source, split: text_file.read_text())
    out = tmp_path / "o"
    assert run(capsys, *prune_args(tiny_dir, out, text_file))[0] == 0
    code, stdout, _ = run(
        capsys,
        "eval",
        out,
        "--base",
        tiny_dir,
        "--window",
        "32",
        "--max-windows",
        "3",
        "--json",
        tmp_path / "r.json",
    )
    assert code == 0 and "| perplexity (window 32, stride 32, bos False) |" in stdout
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["before"]["perplexity"]["tokens"] == res["after"]["perplexity"]["tokens"] == 95
    assert torch.isfinite(torch.tensor(res["after"]["perplexity"]["perplexity"]))
