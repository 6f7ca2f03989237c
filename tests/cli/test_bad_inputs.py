"""The bad-input catalogue: every case gives one line `depthcut: error: …`, exit 2, writes
nothing (no --out, no temporary sibling) and leaves its input directories byte-identical. The
documentation's "Bad input" page (docs/bad-input.md) lists the same cases with the same
messages (tested)."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from depthcut.cli import main
from tiny import save_tiny, tiny_llama, tiny_tokenizer, words

# (case, the message's fixed part); the README's table quotes each message
CATALOGUE = {
    "nan_weights": "has 1 NaN or inf values; the checkpoint is corrupt",
    "missing_shard": "cannot load its weights",
    "truncated_safetensors": "cannot load its weights",
    "read_only_out": "cannot write there (Read-only file system)",
    "full_disk": "writing failed (No space left on device); nothing was kept",
    "plan_other_model": "plan was made for a model with 6 blocks",
    "scores_other_calibration": "made with calib=",
    "recipe_newer": "recipe format version 99 is newer than this depthcut reads (1)",
    "plan_newer": "plan format version 7 is newer than this depthcut reads (1)",
    "plan_corrupt": "not a valid plan file (JSONDecodeError)",
    "scores_missing": "nope.json: no such scores file",
    "unknown_units": "units ['foo'] unknown",
    "budget_out_of_range": "budget params=1.5 must be a fraction in (0, 1)",
    "unknown_budget_mode": "budget mode 'over' unknown; choose one of at_least, at_most, nearest",
    "out_exists": "exists (use --overwrite to replace it)",
    "no_such_model": "no such directory",
    "no_config": "not a model directory (no config.json)",
    "no_tokenizer": "no tokenizer in",
    "unknown_importance": "unknown importance",
    "width_without_fraction": "units include head: give heads=FRACTION in (0, 1)",
    "empty_calibration": "has fewer than 2 articles to split",
    "unknown_task": "unknown task 'nosuchtask'",
    "prune_quantized": "quantize last",
    "recover_bad_method": "recover method 'magic'; choose one of ('lora', 'full')",
    "recover_nothing_to_resume": "holds no checkpoints; drop --resume",
    "recover_sparse_temperature": "recover temperature=2.0 with stored top-64 teacher targets",
    "recover_save_every": "recover save_every=3 must be a multiple of eval_every=20",
    "recover_fsdp_on_cpu": "FSDP needs GPUs: accelerate runs CPU processes data-parallel only",
    "report_not_a_run": "no report.json or history.json (not a depthcut prune output)",
    "explain_bad_pair": "--pairs 'mlp1': give a pair of two units of --units",
    "quantize_bad_method": "quantize method 'int3'",
    "no_cuda": "--device cuda: no CUDA device on this machine; use --device cpu",
    "unknown_dtype": "--dtype 'float8' unknown; use one of float32, bfloat16, float16, auto",
    "max_memory_below_block": "--max-memory cpu=1KB (0.000 GiB) is smaller than one block",
    "export_quantized": "an int8-quantized run cannot be exported",
    "export_unknown_format": "unknown export format 'onnx'; use one of hf, hf-hetero, gguf",
    "export_quant_not_gguf": "--quant applies to --format gguf only",
    "export_unknown_gguf_type": "unknown GGUF type 'q3'; use one of f32, f16, q8_0, q4_k_m",
    "unknown_repair": "repair 'magic' unknown; choose one of ('auto', 'none', 'ls', 'patch')",
    "repair_too_few_tokens": "give --n-samples 16 or more at --seq-len 8",
    "repair_patch_width": "--repair patch bridges removed blocks; use --repair ls for this plan",
    "resume_unsupported": "--resume continues streamed scores of local depth metrics",
    "unknown_runtime": "--runtime 'gpu': choose torch (default) or llamacpp[:TYPE]",
    "runtime_without_search": "--runtime llamacpp times the joint search's options",
    "table_of_other_runtime": "this option table was timed in torch, not llamacpp",
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Inputs shared by the cases: a model, a calibration text, a pruned and a quantized run."""
    root = tmp_path_factory.mktemp("bad")
    save_tiny(root / "model")
    (root / "text.txt").write_text("\n\n".join(words(200, seed=s) for s in range(10)))
    small = ["--calib", root / "text.txt", "--n-samples", "4", "--seq-len", "32"]
    assert main([str(a) for a in ["prune", root / "model", "--out", root / "run", *small]]) == 0
    q = ["quantize", root / "run", "--out", root / "q", "--eval-text", root / "text.txt"]
    assert main([str(a) for a in [*q, "--max-windows", "1", "--window", "32"]]) == 0
    return root, small


def _snapshot(*dirs: Path) -> dict:
    return {
        str(p): p.read_bytes()
        for d in dirs
        if d.exists()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def expect_error(capsys, argv, message, inputs, out=None):
    """Run the CLI; one-line error with ``message``, exit 2, no output, inputs unchanged."""
    before = _snapshot(*inputs)
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("depthcut: error:")]
    assert code == 2 and len(errors) == 1, err
    assert message in errors[0], errors[0]
    assert _snapshot(*inputs) == before
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]
    return errors[0]


def expect_prune_error(capsys, env, tmp_path, case, *extra, model=None):
    """``prune`` of ``model`` (default: the shared one) with ``extra`` flags fails as
    ``CATALOGUE[case]`` says, leaving that model directory untouched."""
    root, small = env
    model = model or root / "model"
    out = tmp_path / "o"
    argv = ["prune", model, "--out", out, *small, *extra]
    return expect_error(capsys, argv, CATALOGUE[case], [model], out)


def _copy_model(env, name):
    root, _ = env
    target = root / name
    if not target.exists():
        shutil.copytree(root / "model", target)
    return target


def test_nan_weights(capsys, env, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = _copy_model(env, "nan")
    state = load_file(bad / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    expect_prune_error(capsys, env, tmp_path, "nan_weights", model=bad)


def test_missing_shard(capsys, env, tmp_path):
    root, _ = env
    bad = root / "sharded"
    if not bad.exists():
        tiny_llama().save_pretrained(bad, max_shard_size="20KB")
        tiny_tokenizer().save_pretrained(bad)
        sorted(bad.glob("model-*.safetensors"))[1].unlink()
    line = expect_prune_error(capsys, env, tmp_path, "missing_shard", model=bad)
    assert "model-00002" in line


def test_truncated_safetensors(capsys, env, tmp_path):
    bad = _copy_model(env, "truncated")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    expect_prune_error(capsys, env, tmp_path, "truncated_safetensors", model=bad)


def test_read_only_output_disk(capsys, env, tmp_path, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    expect_prune_error(capsys, env, tmp_path, "read_only_out")


def test_full_output_disk(capsys, env, tmp_path, monkeypatch):
    import transformers.modeling_utils as hf

    def full(state, filename, **kwargs):  # half a file written, then the disk is full
        Path(filename).write_bytes(b"\0" * 1024)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(hf, "safe_save_file", full)
    expect_prune_error(capsys, env, tmp_path, "full_disk")


def test_ctrl_c_during_save_keeps_nothing(env, tmp_path):
    """SIGINT while the output is being written: exit 130, no --out, no temporary sibling."""
    root, small = env
    out = tmp_path / "o"
    script = (
        # the weights are written, then the main thread waits (transformers writes shards in
        # worker threads, where a sleep would make the interrupt wait for the pool)
        "import sys, time, depthcut.io as io\n"
        "orig = io._write_weights\n"
        "def slow(*a, **k):\n"
        "    orig(*a, **k); print('SAVING', flush=True); time.sleep(60)\n"
        "io._write_weights = slow\n"
        "from depthcut.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["prune", str(root / "model"), "--out", str(out), *map(str, small)]
    before = _snapshot(root / "model")
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job ignores SIGINT, and the child would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while time.time() < deadline and "SAVING" not in proc.stdout.readline():
        pass
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; no partial output was kept" in err
    assert not out.exists() and not list(tmp_path.glob(".o.tmp*"))
    assert _snapshot(root / "model") == before


def test_plan_for_another_model(capsys, env, tmp_path):
    root, _ = env
    other = root / "four"
    if not other.exists():
        tiny_llama(layers=4).save_pretrained(other)
        tiny_tokenizer().save_pretrained(other)
    out = tmp_path / "o"
    argv = ["apply", other, root / "run" / "plan.json", "--out", out]
    expect_error(capsys, argv, CATALOGUE["plan_other_model"], [other, root / "run"], out)


def test_scores_from_another_calibration_set(capsys, env, tmp_path):
    root, _ = env
    other_text = tmp_path / "other.txt"
    other_text.write_text("\n\n".join(words(200, seed=s) for s in range(20, 30)))
    sweep = ["sweep", root / "model", "--methods", "bi", "--budgets", "0.2", "--out"]
    small = ["--n-samples", "2", "--seq-len", "32", "--max-windows", "1", "--window", "32"]
    out = tmp_path / "sw"
    args = [*sweep, out, *small, "--eval-text", root / "text.txt"]
    assert main([str(a) for a in [*args, "--calib", root / "text.txt"]]) == 0
    capsys.readouterr()
    expect_error(
        capsys,
        [*args, "--calib", other_text],
        CATALOGUE["scores_other_calibration"],
        [root / "model", out],
    )


def test_recipe_of_a_newer_format(capsys, env, tmp_path):
    recipe = json.loads((env[0] / "run" / "recipe.json").read_text()) | {"version": 99}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    expect_prune_error(capsys, env, tmp_path, "recipe_newer", "--recipe", path)


def test_plan_of_a_newer_format(capsys, env, tmp_path):
    root, _ = env
    plan = json.loads((root / "run" / "plan.json").read_text()) | {"version": 7}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    out = tmp_path / "o"
    argv = ["apply", root / "model", path, "--out", out]
    expect_error(capsys, argv, CATALOGUE["plan_newer"], [root / "model"], out)


def test_corrupt_plan(capsys, env, tmp_path):
    root, _ = env
    path = tmp_path / "plan.json"
    path.write_text('{"actions": [')
    out = tmp_path / "o"
    argv = ["apply", root / "model", path, "--out", out]
    expect_error(capsys, argv, CATALOGUE["plan_corrupt"], [root / "model"], out)


def test_missing_scores(capsys, env, tmp_path):
    out = tmp_path / "plan.json"
    argv = ["plan", tmp_path / "nope.json", "--out", out]
    expect_error(capsys, argv, CATALOGUE["scores_missing"], [env[0] / "run"], out)


CONFIG_CASES = {
    "unknown_units": ["--units", "foo"],
    "budget_out_of_range": ["--budget", "params=1.5"],
    "unknown_budget_mode": ["--budget-mode", "over"],
    "unknown_importance": ["--importance", "foo"],
    "width_without_fraction": ["--units", "head,neuron", "--neurons", "0.2"],
    "no_cuda": ["--device", "cuda"],
    "unknown_dtype": ["--dtype", "float8"],
    "max_memory_below_block": ["--max-memory", "cpu=1KB"],
    "unknown_repair": ["--repair", "magic"],
    "repair_patch_width": ["--units", "neuron", "--repair", "patch"],
    "resume_unsupported": ["--streaming", "--resume", "--units", "block", "--importance", "kl"],
    "unknown_runtime": ["--units", "auto", "--budget", "latency=0.2", "--runtime", "gpu"],
    "runtime_without_search": ["--units", "neuron", "--runtime", "llamacpp"],
    "repair_too_few_tokens": [
        "--units",
        "block",
        "--repair",
        "ls",
        "--n-samples",
        "1",
        "--seq-len",
        "8",
    ],
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_prune_config(capsys, env, tmp_path, case):
    expect_prune_error(capsys, env, tmp_path, case, *CONFIG_CASES[case])


def test_table_of_other_runtime(capsys, env, tmp_path):
    """``frontier --table`` of PyTorch timings under ``--runtime llamacpp``: refused before the
    model loads."""
    from depthcut.search.library import OptionTable

    root, small = env
    table = tmp_path / "options.json"
    OptionTable({"model_type": "llama"}, [], {"runtime": "torch", "ratios": {}}).save(table)
    out = tmp_path / "f"
    argv = ["frontier", root / "model", "--budgets", "latency=0.2", "--table", table]
    argv += ["--runtime", "llamacpp", "--out", out, *small]
    expect_error(capsys, argv, CATALOGUE["table_of_other_runtime"], [root / "model"], out)


def test_existing_out(capsys, env):
    root, small = env
    before = _snapshot(root / "run")
    argv = ["prune", root / "model", "--out", root / "run", *small]
    expect_error(capsys, argv, CATALOGUE["out_exists"], [root / "model", root / "run"])
    assert _snapshot(root / "run") == before


def test_model_paths(capsys, env, tmp_path):
    root, _ = env
    expect_error(capsys, ["inspect", tmp_path / "nope"], CATALOGUE["no_such_model"], [])
    (tmp_path / "empty").mkdir()
    expect_error(capsys, ["inspect", tmp_path / "empty"], CATALOGUE["no_config"], [])
    notok = root / "notok"
    if not notok.exists():
        tiny_llama().save_pretrained(notok)
    out = tmp_path / "s.json"
    argv = ["score", notok, "--out", out, "--calib", root / "text.txt"]
    line = expect_error(capsys, argv, CATALOGUE["no_tokenizer"], [notok], out)
    assert line.endswith("pass --tokenizer PATH")


def test_empty_calibration_text(capsys, env, tmp_path):
    root, _ = env
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    out = tmp_path / "o"
    argv = ["prune", root / "model", "--out", out, "--calib", empty]
    expect_error(capsys, argv, CATALOGUE["empty_calibration"], [root / "model"], out)


# case: (argv with {run} / {q} / {model} / {out} / {small}, the input directory it reads)
SIMPLE = {
    "unknown_task": (["eval", "{run}", "--tasks", "nosuchtask", "--json", "{out}"], "run"),
    "prune_quantized": (["prune", "{q}", "--out", "{out}", "{small}"], "q"),
    "recover_bad_method": (["recover", "{run}", "--method", "magic", "--out", "{out}"], "run"),
    "recover_nothing_to_resume": (["recover", "{run}", "--resume", "--out", "{out}"], "run"),
    "recover_sparse_temperature": (
        ["recover", "{run}", "--loss", "kd", "--temperature", "2", "--out", "{out}"],
        "run",
    ),
    "recover_save_every": (["recover", "{run}", "--save-every", "3", "--out", "{out}"], "run"),
    "explain_bad_pair": (["explain", "{model}", "--pairs", "mlp1", "--out", "{out}"], "model"),
    "quantize_bad_method": (["quantize", "{run}", "--method", "int3", "--out", "{out}"], "run"),
    "export_quantized": (["export", "{q}", "--format", "gguf", "--out", "{out}"], "q"),
    "export_unknown_format": (["export", "{run}", "--format", "onnx", "--out", "{out}"], "run"),
    "export_quant_not_gguf": (
        ["export", "{run}", "--format", "hf", "--quant", "q4_k_m", "--out", "{out}"],
        "run",
    ),
    "export_unknown_gguf_type": (
        ["prune", "{model}", "--export", "gguf:q3", "--out", "{out}", "{small}"],
        "model",
    ),
}


@pytest.mark.parametrize("case", sorted(SIMPLE))
def test_simple_case(capsys, env, tmp_path, case):
    root, small = env
    template, source = SIMPLE[case]
    out = tmp_path / "o"
    names = {"run": root / "run", "q": root / "q", "model": root / "model", "out": out}
    argv = []
    for item in template:
        argv += list(small) if item == "{small}" else [str(item).format(**names)]
    expect_error(capsys, argv, CATALOGUE[case], [root / source], out)


def test_recover_fsdp_on_cpu(capsys, env, tmp_path, monkeypatch):
    """What ``accelerate launch --use_fsdp`` sets, on a machine without CUDA: refused first."""
    root, _ = env
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    out = tmp_path / "o"
    argv = ["recover", root / "run", "--out", out]
    expect_error(capsys, argv, CATALOGUE["recover_fsdp_on_cpu"], [root / "run"], out)


def test_report_of_a_model_directory(capsys, env):
    root, _ = env
    before = _snapshot(root / "model")
    expect_error(capsys, ["report", root / "model"], CATALOGUE["report_not_a_run"], [])
    assert _snapshot(root / "model") == before


def test_catalogue_is_in_the_documentation():
    readme = (Path(__file__).parents[2] / "docs" / "bad-input.md").read_text()
    missing = [case for case, msg in CATALOGUE.items() if f"`{case}`" not in readme]
    assert len(CATALOGUE) >= 20 and not missing, missing
    quoted = [case for case, msg in CATALOGUE.items() if msg not in readme]
    assert not quoted, quoted
