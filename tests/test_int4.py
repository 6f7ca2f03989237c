"""4-bit AWQ / GPTQ executed by llm-compressor (its own environment, ``make llmcompressor``) on
a pruned run: saved in compressed-tensors format, reloaded there, its perplexity measured with
depthcut's protocol; refusals before any work."""

import json

import pytest

import depthcut as dc
import depthcut.cli
from depthcut.eval.run import EvalSettings, perplexity_fn
from support import prune_args, run

pytestmark = pytest.mark.slow  # llm-compressor's environment: `make test`, not `make test-fast`

EVAL = ["--window", "32", "--max-windows", "2"]


@pytest.fixture(scope="module")
def run_dir(block_run):
    return block_run


def _quantize(capsys, run_dir, out, text, method, *extra):
    return run(
        capsys, "quantize", run_dir, "--method", method, "--group-size", "16", "--out", out,
        "--calib", text, "--n-samples", "8", "--seq-len", "32", "--eval-text", text, *EVAL,
        *extra,
    )  # fmt: skip


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_int4_runs_saves_compressed_tensors_and_measures(
    capsys, tmp_path, run_dir, pattern_file, method
):
    out = tmp_path / method
    code, stdout, err = _quantize(capsys, run_dir, out, pattern_file, method)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    assert config["format"] == "pack-quantized"
    weights = config["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["strategy"]) == (4, 16, "group")
    assert "lm_head" in config["ignore"]
    report = json.loads((out / "quantize.json").read_text())
    # the worker's float perplexity (transformers 5.17, the exported checkpoint) is depthcut's
    model, tok = dc.load(run_dir)
    settings = EvalSettings(source=str(pattern_file), window=32, stride=32, max_windows=2)
    ours = perplexity_fn(tok, settings)(model)
    assert report["perplexity"]["float"] == pytest.approx(ours, rel=1e-4)
    q = report["perplexity"]["quantized"]
    assert q != pytest.approx(ours, rel=1e-6) and 0.5 * ours < q < 2.0 * ours
    assert report["quantized_mb"] < report["float_mb"]
    assert f"{method} W4A16 (group 16)" in stdout


def test_int4_refusals_come_before_any_work(capsys, tmp_path, run_dir, pattern_file, monkeypatch):
    code, _, err = _quantize(
        capsys, run_dir, tmp_path / "a", pattern_file, "gptq", "--group-size", "24"
    )
    assert code == 2 and "not divisible by group size 24" in err and "--round-to 24" in err
    monkeypatch.setenv("DEPTHCUT_LLMCOMPRESSOR_PYTHON", str(tmp_path / "missing" / "python"))
    code, _, err = _quantize(capsys, run_dir, tmp_path / "b", pattern_file, "awq")
    assert code == 2 and "make llmcompressor" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_gptq_of_per_layer_widths_through_remote_code(capsys, tmp_path, tiny_dir, pattern_file):
    """Neurons pruned per layer (rounded to the group): the run goes to llm-compressor as the
    ``hf-hetero`` export, whose remote code it must trust; its float perplexity is depthcut's."""
    run_dir = tmp_path / "neurons"
    argv = prune_args(tiny_dir, run_dir, pattern_file, "--units", "neuron", "--neurons", "0.3")
    code, _, err = run(capsys, *argv, "--round-to", "16")
    assert code == 0, err
    code, _, err = _quantize(capsys, run_dir, tmp_path / "q", pattern_file, "gptq")
    assert code == 0, err
    report = json.loads((tmp_path / "q" / "quantize.json").read_text())
    model, tok = dc.load(run_dir)
    settings = EvalSettings(source=str(pattern_file), window=32, stride=32, max_windows=2)
    assert report["perplexity"]["float"] == pytest.approx(
        perplexity_fn(tok, settings)(model), rel=1e-4
    )
