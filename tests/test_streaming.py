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
    dict(units=("block",), importance="kl"),
    dict(units=("attention", "mlp"), importance="ce"),
    dict(units=("block", "mlp"), importance="ppl"),
    dict(units=("head", "neuron"), heads=0.25, neurons=0.25, width_importance="magnitude"),
    dict(units=("head", "neuron"), heads=0.25, neurons=0.25, width_importance="taylor"),
    dict(units=("neuron",), neurons=0.25, width_importance="activation_frequency"),
    dict(units=("head", "neuron"), heads=0.25, neurons=0.25, width_importance="ls"),
    dict(units=("block", "head"), heads=0.25, width_importance="output_norm"),
    dict(units=("fine",), importance="taylor", budget=dc.Budget(0.2)),
    dict(units=("fine",), importance="angular", budget=dc.Budget(0.2)),
]


def _id(kw: dict) -> str:
    return "-".join(kw["units"]) + ":" + kw.get("width_importance", kw.get("importance", ""))


@pytest.mark.parametrize("builder", [tiny_llama, tiny_qwen2], ids=["llama", "qwen2-sliding"])
@pytest.mark.parametrize("kw", SCORES, ids=_id)
def test_streamed_scores_equal_in_memory(tmp_path, builder, kw):
    """Local, logit (every candidate carried along one pass), width and fine-grained scores
    (gradients by a reverse pass from the top block) equal the in-memory ones exactly."""
    model = save_tiny(tmp_path / "m", builder).eval()
    cfg, calib = dc.PruneConfig(**kw), tiny_calib(pad_last=3)
    dense = dc.score(model, cfg, calib, progress=False)
    source = BlockSource(tmp_path / "m")
    streamed = stream_score(source, cfg, calib, progress=False)
    assert streamed.unit_scores == dense.unit_scores  # the same arithmetic, block by block
    assert streamed.width == dense.width and streamed.fine == dense.fine
    assert streamed.spans == dense.spans and streamed.model == dense.model
    assert [u.id for u in streamed.units] == [u.id for u in dense.units]
    if cfg.depth_units or cfg.fine:
        cost = dense.cost["forward_equivalents"]
        assert streamed.cost["forward_equivalents"] == pytest.approx(cost, rel=1e-12)
    assert all(p.is_meta for p in source.blocks.parameters())  # every block released


def test_streamed_perplexity_equals_in_memory(tmp_path):
    """Dense and pruned (blocks, a sublayer, heads, neurons; fine units) perplexity, streamed
    == loaded."""
    from depthcut.eval.perplexity import perplexity
    from depthcut.stream.perplexity import stream_perplexity

    model = save_tiny(tmp_path / "m").eval()
    ids = torch.randint(3, 97, (300,), generator=torch.Generator().manual_seed(0))
    proto = dict(window=64, stride=48, bos_id=1)
    source = BlockSource(tmp_path / "m")
    dense = perplexity(model, ids, **proto, progress=False)
    assert stream_perplexity(source, ids, **proto, progress=False) == dense
    cfg = dc.PruneConfig(
        units=("block", "attention", "neuron", "head"),
        budget=dc.Budget(0.15),
        heads=0.1,
        neurons=0.3,
    )
    plan = dc.plan(dc.score(model, cfg, tiny_calib(), progress=False), cfg, model)
    assert {a.kind.value for a in plan.actions} >= {"block", "neuron", "head"}
    pruned = perplexity(dc.apply(model, plan), ids, **proto, progress=False)
    streamed = stream_perplexity(source, ids, **proto, plan=plan, progress=False)
    assert streamed.nll == pytest.approx(pruned.nll, rel=1e-6) and streamed != dense
    cfg = dc.PruneConfig(units=("fine",), importance="taylor", budget=dc.Budget(0.2))
    plan = dc.plan(dc.score(model, cfg, tiny_calib(), progress=False), cfg, model)
    pruned = perplexity(dc.apply(model, plan), ids, **proto, progress=False)
    streamed = stream_perplexity(source, ids, **proto, plan=plan, progress=False)
    assert streamed.nll == pytest.approx(pruned.nll, rel=1e-6) and streamed != dense


def test_walk_prefetches_in_order_and_releases(tmp_path):
    save_tiny(tmp_path / "m")
    source = BlockSource(tmp_path / "m")
    seen = []
    for i in source.walk([4, 1, 2]):
        assert not any(p.is_meta for p in source.blocks[i].parameters())
        assert sum(not p.is_meta for p in source.blocks.parameters()) == len(
            list(source.blocks[i].parameters())
        )  # one block materialised in the model at a time
        seen.append(i)
    assert seen == [4, 1, 2] and all(p.is_meta for p in source.blocks.parameters())


def test_streaming_refuses_what_needs_the_whole_model(tmp_path):
    save_tiny(tmp_path / "m")
    for kw, says in [
        (dict(units=("fine",), importance="kl"), "runs the rest of the model per unit"),
        (dict(units=("block",), strategy="iterative"), "re-scores the model after every"),
        (dict(units=("neuron",), neurons=0.2, width_steps=2), "re-scores the model after every"),
    ]:
        with pytest.raises(ConfigError, match=says):
            stream_score(BlockSource(tmp_path / "m"), dc.PruneConfig(**kw), tiny_calib())


def _prune(tmp_path, model_dir, name, *extra):
    text = tmp_path / "t.txt"
    if not text.exists():
        text.write_text("\n\n".join(words(200, seed=s) for s in range(10)))
    out = tmp_path / name
    budget = [] if "--budget" in extra else ["--budget", "params=0.3"]  # one --budget each
    argv = [
        "prune",
        model_dir,
        *budget,
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
    "units",
    [
        ["--units", "block"],
        ["--units", "attention,mlp", "--importance", "angular"],
        ["--units", "block,mlp", "--importance", "kl"],
        ["--units", "head,neuron", "--heads", "0.25", "--neurons", "0.3", "--repair", "none"],
        ["--units", "neuron", "--width-importance", "taylor", "--repair", "none"],
        [
            "--units",
            "fine",
            "--importance",
            "angular",
            "--budget",
            "params=0.2",
            "--repair",
            "none",
        ],
    ],
    ids=["block", "sublayer", "kl", "width", "taylor", "fine"],
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
@pytest.mark.parametrize(
    "units",
    [
        ["--units", "block"],
        ["--units", "neuron", "--width-importance", "activation_frequency", "--repair", "none"],
    ],
    ids=["block", "neuron"],
)
def test_streamed_smollm2_equals_in_memory(tmp_path, units):
    """The packaged SmolLM2-135M: same plan, byte-identical tensors (blocks; neurons sliced on
    disk block by block)."""
    runs = {}
    for mode in ("mem", "stream"):
        out = tmp_path / mode
        cmd = [
            sys.executable,
            "-m",
            "depthcut.cli",
            "prune",
            "smollm2-135m",
            *units,
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


def test_streamed_prune_measures_perplexity_as_in_memory(tmp_path):
    """``prune --streaming --perplexity``: the dense and the pruned perplexity (streamed, the
    plan applied block by block) equal the in-memory run's report."""
    save_tiny(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    units = ["--units", "block,neuron", "--budget", "params=0.1", "--neurons", "0.3"]
    units += ["--repair", "none", "--perplexity"]
    units += ["--window", "64", "--max-windows", "2", "--eval-text", tmp_path / "t.txt"]
    mem = _prune(tmp_path, tmp_path / "m", "mem", *units)
    streamed = _prune(tmp_path, tmp_path / "m", "stream", *units, "--streaming")
    a = json.loads((mem / "report.json").read_text())
    b = json.loads((streamed / "eval.json").read_text())
    for when in ("before", "after"):
        assert b[when]["perplexity"]["nll"] == pytest.approx(a[when]["perplexity"]["nll"], 1e-6)
        assert b[when]["params_all"] == a[when]["params_all"]
    assert a["after"]["perplexity"]["nll"] != a["before"]["perplexity"]["nll"]
    cards = [(d / "README.md").read_text().split("## What was removed")[1] for d in (mem, streamed)]
    assert cards[0] == cards[1]  # the same model card, numbers from eval.json when streamed


def test_streamed_prune_refuses_latency(tmp_path, capsys):
    save_tiny(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    argv = ["prune", str(tmp_path / "m"), "--streaming", "--latency", "--out", str(tmp_path / "o")]
    assert main(argv) != 0
    assert "measures --perplexity only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_raw_copy_is_byte_identical_and_checked(tmp_path):
    """Copied tensors go as bytes under new names (bfloat16 and int tensors included), load
    back equal, and a changed byte is caught."""
    from safetensors.torch import save_file

    from depthcut.stream.rawcopy import copy_tensors, same_bytes

    g = torch.Generator().manual_seed(0)
    state = {
        "a": torch.randn(5, 7, generator=g).to(torch.bfloat16),
        "b": torch.arange(11),
        "c": torch.randn(3, generator=g),
    }
    save_file(state, str(tmp_path / "src.safetensors"))
    copy_tensors(
        tmp_path / "src.safetensors", {"c": "x.c", "a": "x.a"}, tmp_path / "out.safetensors"
    )
    back = load_file(tmp_path / "out.safetensors")
    assert sorted(back) == ["x.a", "x.c"]
    assert torch.equal(back["x.a"], state["a"]) and back["x.a"].dtype == torch.bfloat16
    assert torch.equal(back["x.c"], state["c"])
    assert same_bytes(tmp_path / "out.safetensors", "x.a", tmp_path / "src.safetensors", "a")
    changed = dict(state, a=state["a"].clone())
    changed["a"][0, 0] += 1
    save_file(changed, str(tmp_path / "other.safetensors"))
    assert not same_bytes(tmp_path / "out.safetensors", "x.a", tmp_path / "other.safetensors", "a")
    assert not same_bytes(tmp_path / "out.safetensors", "x.c", tmp_path / "src.safetensors", "a")


def test_disk_verification_catches_a_changed_tensor(tmp_path):
    """The read-back check of apply on disk catches a changed copied tensor and a changed
    tensor of an edited (neuron-sliced) block."""
    from safetensors.torch import save_file

    from depthcut.errors import OutputWriteError
    from depthcut.stream.apply import Tensors, verify_copy, write_shards
    from depthcut.stream.edit import PlanEdit

    save_tiny(tmp_path / "m")
    source = BlockSource(tmp_path / "m")
    cfg = dc.PruneConfig(units=("block", "neuron"), budget=dc.Budget(0.1), neurons=0.3)
    plan = dc.plan(stream_score(source, cfg, tiny_calib(), progress=False), cfg)
    out = tmp_path / "o"
    out.mkdir()
    tensors = Tensors(source, PlanEdit(source, plan))
    weight_map = write_shards(tensors, out)
    verify_copy(tensors, weight_map, out)  # as written: accepted
    edited = next(n for n, (kind, _) in tensors.origin.items() if kind == "block")
    for name in ("model.embed_tokens.weight", edited):
        file = out / weight_map[name]
        state = load_file(file)
        original = state[name].clone()
        state[name].view(-1)[0] += 1e-3
        save_file(state, str(file), metadata={"format": "pt"})
        with pytest.raises(OutputWriteError, match=name):
            verify_copy(tensors, weight_map, out)
        state[name] = original
        save_file(state, str(file), metadata={"format": "pt"})
