"""Jobs are callable from Python with typed configs and do what the CLI verbs do."""

from pathlib import Path

import depthcut as dc
from depthcut.cli import main
from depthcut.jobs import CalibSpec, ExplainJob, ModelRef, Output, PruneJob, run_explain, run_prune
from depthcut.recipe import Recipe
from tiny import words


def test_prune_job_equals_the_cli(tmp_path, tiny_dir):
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(words(200, seed=s) for s in range(10)))
    cfg = dc.PruneConfig(units=("block", "mlp"), importance="angular", budget=dc.Budget(0.2))
    job = PruneJob(
        ModelRef(str(tiny_dir)),
        Recipe(cfg),
        Output(tmp_path / "py"),
        CalibSpec(str(text), n_samples=4, seq_len=32),
    )
    out = run_prune(job)
    assert out == (tmp_path / "py").resolve()
    argv = ["prune", tiny_dir, "--out", tmp_path / "cli", "--units", "block,mlp"]
    argv += ["--importance", "angular", "--budget", "params=0.2", "--calib", text]
    assert main([str(a) for a in [*argv, "--n-samples", "4", "--seq-len", "32"]]) == 0
    for name in ("plan.json", "recipe.json", "model.safetensors"):
        assert (out / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name


def test_explain_job_refuses_a_bad_pair_before_any_work(tmp_path, tiny_dir):
    import pytest

    from depthcut.errors import ConfigError

    job = ExplainJob(ModelRef(str(tiny_dir)), Output(tmp_path / "x"), ("mlp",), ("mlp:1+x:2",))
    with pytest.raises(ConfigError, match="mlp:1\\+x:2"):
        run_explain(job)
    assert not Path(tmp_path / "x").exists()
