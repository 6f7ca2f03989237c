"""--streaming: scores, plans and saved tensors equal the in-memory path's, with one block in
memory at a time (tiny models, a sharded checkpoint, and the packaged SmolLM2)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import depthcut as dc
from depthcut.cli import main
from depthcut.errors import ConfigError
from depthcut.stream.score import stream_score
from depthcut.stream.source import BlockSource
from tiny import save_tiny, tiny_calib, tiny_llama, tiny_qwen2, tiny_tokenizer, words

SCORES = [
    dict(units=("block",), importance="bi"),
    dict(units=("attention", "mlp"), importance="angular", tokens="last"),
    dict(units=("block",), importance="gromov"),
    dict(units=("block", "attention", "mlp"), importance="random"),
]


@pytest.mark.parametrize("builder", [tiny_llama, tiny_qwen2], ids=["llama", "qwen2-sliding"])
@pytest.mark.parametrize("kw", SCORES, ids=lambda kw: kw["importance"])
def test_streamed_scores_equal_in_memory(tmp_path, builder, kw):
    model = save_tiny(tmp_path / "m", builder).eval()
    cfg, calib = dc.PruneConfig(**kw), tiny_calib(pad_last=3)
    dense = dc.score(model, cfg, calib, progress=False)
    source = BlockSource(tmp_path / "m")
    streamed = stream_score(source, cfg, calib, progress=False)
    assert streamed.unit_scores == dense.unit_scores  # the same arithmetic, block by block
    assert streamed.spans == dense.spans and streamed.model == dense.model
    assert streamed.cost["forward_equivalents"] == dense.cost["forward_equivalents"]
    assert all(p.is_meta for p in source.blocks.parameters())  # every block released


def test_streaming_refuses_what_needs_the_whole_model(tmp_path):
    save_tiny(tmp_path / "m")
    for kw, says in [
        (dict(units=("block",), importance="kl"), "re-run the rest of the model"),
        (dict(units=("head",), heads=0.25), "width and fine units need the whole model"),
        (dict(units=("block",), strategy="iterative"), "re-run the rest of the model"),
    ]:
        with pytest.raises(ConfigError, match=says):
            stream_score(BlockSource(tmp_path / "m"), dc.PruneConfig(**kw), tiny_calib())


def _prune(tmp_path, model_dir, name, *extra):
    text = tmp_path / "t.txt"
    if not text.exists():
        text.write_text("\n\n".join(words(200, seed=s) for s in range(10)))
    out = tmp_path / name
    argv = [
        "prune",
        model_dir,
        "--budget",
        "params=0.3",
        "--calib",
        text,
        "--n-samples",
        "8",
        "--seq-len",
        "32",
        "--out",
        out,
        *extra,
    ]
    assert main([str(a) for a in argv]) == 0
    return out


def _tensors(folder: Path) -> dict:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out |= load_file(file)
    return out


@pytest.mark.parametrize(
    "units", [["--units", "block"], ["--units", "attention,mlp", "--importance", "angular"]]
)
def test_streamed_prune_writes_the_in_memory_checkpoint(tmp_path, units):
    sharded = tmp_path / "sharded"
    tiny_llama().save_pretrained(sharded, max_shard_size="20KB")  # several shards
    tiny_tokenizer().save_pretrained(sharded)
    mem = _prune(tmp_path, sharded, "mem", *units)
    streamed = _prune(tmp_path, sharded, "stream", *units, "--streaming")
    assert len(list(streamed.glob("*.safetensors"))) > 1  # written shard by shard
    assert json.loads((streamed / "model.safetensors.index.json").read_text())["weight_map"]
    a, b = _tensors(mem), _tensors(streamed)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (mem / "plan.json").read_text() == (streamed / "plan.json").read_text()
    ids = torch.arange(3, 30).unsqueeze(0)
    logits = [dc.load(d)[0](input_ids=ids).logits for d in (mem, streamed)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    if units[1] == "block":  # block plans stay a plain checkpoint of the architecture
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_pretrained(streamed).eval()
        torch.testing.assert_close(plain(input_ids=ids).logits, logits[0], rtol=0, atol=0)


@pytest.mark.slow
def test_streamed_smollm2_equals_in_memory(tmp_path):
    """The packaged SmolLM2-135M: same plan, byte-identical tensors, streamed in a subprocess
    whose peak RSS stays below the in-memory run's."""
    runs = {}
    for mode in ("mem", "stream"):
        out = tmp_path / mode
        cmd = [
            sys.executable,
            "-m",
            "depthcut.cli",
            "prune",
            "smollm2-135m",
            "--units",
            "block",
            "--budget",
            "params=0.25",
            "--n-samples",
            "8",
            "--seq-len",
            "128",
            "--out",
            str(out),
        ] + (["--streaming"] if mode == "stream" else [])
        subprocess.run(cmd, check=True, capture_output=True)
        runs[mode] = out
    assert (runs["mem"] / "plan.json").read_text() == (runs["stream"] / "plan.json").read_text()
    a, b = _tensors(runs["mem"]), _tensors(runs["stream"])
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
