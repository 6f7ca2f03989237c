import json

import pytest

from depthcut.errors import OutputExistsError
from depthcut.jobs.sweep import sweep_table
from depthcut.report.curves import plot_sweep
from depthcut.sweep import SweepConfig, run_sweep
from support import run
from tiny import tiny_calib, tiny_llama

PNG = b"\x89PNG\r\n\x1a\n"
CFG = SweepConfig(methods=("random", "bi", "gromov", "iterative", "sublayer"), budgets=(0.2, 0.4))


def measure(model, dense):
    """A deterministic stand-in for perplexity: the logits' mean on fixed input."""
    ids = tiny_calib(n=2, length=10).input_ids
    return {"perplexity": float(model(input_ids=ids).logits.abs().mean()) + 1.0}


class Stop(Exception):
    pass


def test_sweep_resumes_to_identical_results(tmp_path):
    model, calib = tiny_llama(layers=6), tiny_calib()
    full = run_sweep(model, None, calib, CFG, tmp_path / "full", measure)
    assert len(full["points"]) == 1 + 5 * 2

    seen = []

    def die_after_four(point):
        seen.append(point)
        if len(seen) == 4:
            raise Stop

    with pytest.raises(Stop):
        run_sweep(model, None, calib, CFG, tmp_path / "cut", measure, on_point=die_after_four)
    saved = json.loads((tmp_path / "cut" / "sweep.json").read_text())
    assert len(saved["points"]) == 4
    resumed_points = []
    again = run_sweep(
        model, None, calib, CFG, tmp_path / "cut", measure, on_point=resumed_points.append
    )
    assert len(resumed_points) == 7  # only the missing points ran
    assert again["points"] == full["points"]
    fracs = {(p["method"], p["budget"]): p["removed_fraction"] for p in full["points"][1:]}
    assert all(f >= b for (_, b), f in fracs.items())
    assert fracs[("bi", 0.4)] >= fracs[("bi", 0.2)]


def test_sweep_refuses_other_settings_and_draws_curves(tmp_path):
    model, calib = tiny_llama(layers=6), tiny_calib()
    cfg = SweepConfig(methods=("random", "bi"), budgets=(0.2,))
    state = run_sweep(model, None, calib, cfg, tmp_path, measure)
    named = r"made with methods=\['random', 'bi'\], not \['bi'\]: its scores and points would mix"
    with pytest.raises(OutputExistsError, match=named):
        run_sweep(
            model, None, calib, SweepConfig(methods=("bi",), budgets=(0.2,)), tmp_path, measure
        )
    drawn = plot_sweep(state, tmp_path)
    assert drawn == {"sweep_ppl.png": 2}
    assert (tmp_path / "sweep_ppl.png").read_bytes()[:8] == PNG
    table = sweep_table(state)
    assert table.count("\n") == 4 and "| bi | 20% |" in table


def test_sweep_cli(capsys, tmp_path, tiny_dir, pattern_file):
    text = pattern_file
    argv = [
        "sweep",
        tiny_dir,
        "--methods",
        "random,bi",
        "--budgets",
        "0.2,0.4",
        "--out",
        tmp_path / "s",
        "--calib",
        text,
        "--eval-text",
        text,
        "--n-samples",
        "4",
        "--seq-len",
        "32",
        "--window",
        "32",
        "--max-windows",
        "2",
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    state = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert len(state["points"]) == 5 and (tmp_path / "s" / "sweep_ppl.png").exists()
    assert (tmp_path / "s" / "scores" / "bi.json").exists()
    code, out, err = run(capsys, *argv)  # nothing left to do: resumes instantly
    assert code == 0 and "depthcut: sweep" not in err
    code, _, err = run(capsys, *argv[:-8], "--budgets", "0.7,1.5")
    assert code == 2 and "budgets" in err


def test_sweep_with_fine_grained_methods(tmp_path):
    model, calib = tiny_llama(layers=6), tiny_calib()
    cfg = SweepConfig(methods=("fine", "fine_unified", "fine_iterative"), budgets=(0.1, 0.2))
    state = run_sweep(model, None, calib, cfg, tmp_path, measure)
    points = {(p["method"], p["budget"]): p for p in state["points"][1:]}
    assert len(points) == 6
    for (_method, budget), p in points.items():
        assert p["removed_fraction"] >= budget
        assert all(".mlp." in u or ".self_attn" in u for u in p["removed"])
    small, large = points[("fine", 0.1)]["removed"], points[("fine", 0.2)]["removed"]
    assert large[: len(small)] == small  # same scores, the larger budget extends the order
