"""hf (plain checkpoint) and hf-hetero (trust_remote_code, loaded where depthcut cannot be
imported) exports: logits equal to depthcut.load's, cached generate() equal to uncached."""

from __future__ import annotations

import json

import pytest
import torch

import depthcut as dc
from depthcut.errors import ConfigError, DepthcutError, OutputExistsError, UnsupportedModelError
from depthcut.formats.layout import block_specs
from depthcut.formats.run import export_run
from depthcut.graph.structure import discover_structure
from depthcut.methods import describe
from depthcut.planning.plan import Action, Plan
from support import prune_run, save_run
from tiny import tiny_calib, tiny_gpt2, tiny_llama, tiny_qwen2, tiny_tokenizer


def mixed_plan(model) -> Plan:
    """Block 0 without attention, block 2 without MLP, per-layer FFN widths 57 and 44 (not
    multiples of anything), block 5 with half its KV groups."""
    return Plan(
        [
            Action("attention", 0, "model.layers.0.self_attn", 1),
            Action("mlp", 2, "model.layers.2.mlp", 1),
            Action("neuron", 3, "model.layers.3.mlp", 1, None, tuple(range(7))),
            Action("neuron", 4, "model.layers.4.mlp", 1, None, tuple(range(20))),
            Action("head", 5, "model.layers.5.self_attn", 1, None, (1,)),
        ],
        describe(model, discover_structure(model)),
    )


def reloaded_logits(run, ids):
    model, _ = dc.load(run)
    with torch.no_grad():
        return model(input_ids=ids).logits


def plain_matches_depthcut(out, run):
    """Plain ``from_pretrained`` of the export gives depthcut.load's logits; returns it."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(3, 97, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, reloaded_logits(run, ids))
    return plain


def test_mixed_plan_layout_per_block():
    model = tiny_llama(6)
    specs = block_specs(dc.apply(model, mixed_plan(model)))
    got = [(s.heads, s.kv_heads, s.ffn) for s in specs]
    assert got == [(0, 0, 64), (4, 2, 64), (4, 2, 0), (4, 2, 57), (4, 2, 44), (2, 1, 64)]


def test_hetero_mixed_plan_loads_without_depthcut(tmp_path):
    model = tiny_llama(6)
    save_run(tmp_path / "run", model, mixed_plan(model))
    out = export_run(tmp_path / "run", "hf-hetero", tmp_path / "hetero")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"]
    blocks = config["block_configs"]
    assert [b["attention"]["no_op"] for b in blocks] == [True] + [False] * 5
    assert [b["ffn"]["intermediate_size"] for b in blocks] == [64, 64, 0, 57, 44, 64]
    assert blocks[5]["attention"]["n_heads_in_group"] == 2
    assert config["per_layer_config"]["2"]["skip"] == ["mlp"]
    note = json.loads((out / "export.json").read_text())
    assert "loads without depthcut" in note["verified"]
    assert note["layout"].endswith("vLLM cannot load it (query heads pruned in blocks [5])")
    assert (out / "modeling_depthcut.py").exists()
    # the export, loaded here with trust_remote_code, against depthcut.load (independent paths)
    from transformers import AutoModelForCausalLM

    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ids = torch.randint(3, 97, (2, 12))
    with torch.no_grad():
        got = remote(input_ids=ids).logits
    torch.testing.assert_close(got, reloaded_logits(tmp_path / "run", ids))
    reloaded = dc.load(tmp_path / "run")[0]
    count = sum(p.numel() for p in reloaded.parameters())
    assert sum(p.numel() for p in remote.parameters()) == count  # nothing padded or dropped


@pytest.mark.parametrize("units", [("fine",), ("attention", "mlp")])
def test_hetero_from_scored_plans(tmp_path, units):
    cfg = dc.PruneConfig(units=units, importance="bi", budget=dc.Budget(0.4))
    prune_run(tmp_path / "run", tiny_llama(6), cfg)
    out = export_run(tmp_path / "run", "hf-hetero", tmp_path / "hetero")
    blocks = json.loads((out / "config.json").read_text())["block_configs"]
    assert any(b["attention"]["no_op"] or b["ffn"]["no_op"] for b in blocks)


def test_hf_plain_checkpoint_for_block_and_uniform_width(tmp_path):
    cfg = dc.PruneConfig(units=("block",), budget=dc.Budget(0.3))
    pruned = prune_run(tmp_path / "run", tiny_llama(6), cfg)
    out = export_run(tmp_path / "run", "hf", tmp_path / "hf")
    plain = plain_matches_depthcut(out, tmp_path / "run")
    assert plain.config.num_hidden_layers == len(pruned.model.layers) < 6


def test_hf_uniform_width(tmp_path):
    model = tiny_llama(4)
    actions = [
        Action("neuron", b, f"model.layers.{b}.mlp", 1, None, tuple(range(3 * b, 3 * b + 24)))
        for b in range(4)
    ]
    actions += [
        Action("head", b, f"model.layers.{b}.self_attn", 1, None, (b % 2,)) for b in range(4)
    ]
    plan = Plan(actions, describe(model, discover_structure(model)))
    save_run(tmp_path / "run", model, plan)
    out = export_run(tmp_path / "run", "hf", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert (config["intermediate_size"], config["num_attention_heads"]) == (40, 2)
    assert (config["num_key_value_heads"], config["head_dim"]) == (1, 8)
    plain_matches_depthcut(out, tmp_path / "run")


def test_hf_other_architecture_block_plan(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = dc.PruneConfig(units=("block",), budget=dc.Budget(0.3))
    pruned = prune_run(tmp_path / "run", tiny_gpt2(6), cfg)
    out = export_run(tmp_path / "run", "hf", tmp_path / "hf")
    assert AutoModelForCausalLM.from_pretrained(out).config.n_layer == len(pruned.transformer.h)


def test_refusals_are_one_line_and_write_nothing(tmp_path):
    model = tiny_llama(6)
    save_run(tmp_path / "run", model, mixed_plan(model))
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(
        UnsupportedModelError,
        match=r"block 1 \(4/2 heads, FFN 64\) differs from block 0 \(no attention",
    ):
        export_run(tmp_path / "run", "hf", tmp_path / "hf")
    with pytest.raises(ConfigError, match="unknown export format"):
        export_run(tmp_path / "run", "onnx", tmp_path / "x")
    with pytest.raises(ConfigError, match="--quant applies to --format gguf only"):
        export_run(tmp_path / "run", "hf", tmp_path / "x", quant="q4_k_m")
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputExistsError):
        export_run(tmp_path / "run", "hf-hetero", tmp_path / "exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_int8_run_is_refused(tmp_path):
    from depthcut.quantization import QuantizeConfig, quantize

    model = tiny_llama(4)
    cfg = dc.PruneConfig(units=("block",), budget=dc.Budget(0.25))
    pruned, plan, _ = dc.prune(model, cfg, tiny_calib(), progress=False)
    q = quantize(pruned, QuantizeConfig("dynamic_int8"))
    dc.save(q, plan, tmp_path / "run", tiny_tokenizer())
    with pytest.raises(DepthcutError, match="int8-quantized run cannot be exported"):
        export_run(tmp_path / "run", "gguf", tmp_path / "g", verify=False)
    assert not (tmp_path / "g").exists()


def test_hetero_refuses_other_architectures(tmp_path):
    cfg = dc.PruneConfig(units=("attention", "mlp"), budget=dc.Budget(0.3))
    prune_run(tmp_path / "run", tiny_gpt2(6), cfg)
    with pytest.raises(UnsupportedModelError, match="model type 'gpt2'"):
        export_run(tmp_path / "run", "hf-hetero", tmp_path / "h")
    with pytest.raises(UnsupportedModelError, match="was removed inside its block; a gpt2 export"):
        export_run(tmp_path / "run", "hf", tmp_path / "h")
    assert not (tmp_path / "h").exists()


def test_cli_export_and_prune_export(tmp_path, capsys):
    from depthcut.cli import main
    from tiny import save_tiny, words

    save_tiny(tmp_path / "model")
    (tmp_path / "text.txt").write_text("\n\n".join(words(200, seed=s) for s in range(10)))
    small = ["--calib", str(tmp_path / "text.txt"), "--n-samples", "4", "--seq-len", "32"]
    argv = [
        "prune",
        str(tmp_path / "model"),
        "--units",
        "attention,mlp",
        "--budget",
        "params=0.3",
        "--export",
        "hf-hetero",
        "--out",
        str(tmp_path / "run"),
        *small,
    ]
    assert main(argv) in (0, None)
    blocks = json.loads((tmp_path / "run" / "hf-hetero" / "config.json").read_text())
    assert len(blocks["block_configs"]) >= 5
    assert main(
        [
            "export",
            str(tmp_path / "run"),
            "--format",
            "hf-hetero",
            "--no-verify",
            "--out",
            str(tmp_path / "again"),
        ]
    ) in (0, None)
    assert "verified" not in json.loads((tmp_path / "again" / "export.json").read_text())
    assert "hf-hetero export ->" in capsys.readouterr().out


def test_stand_in_no_format_can_express_names_block_and_module():
    from depthcut.surgery.modules import PatchBranch

    model = tiny_llama(4)
    model.model.layers[1].mlp.up_proj = PatchBranch("linear", fill="one")
    with pytest.raises(UnsupportedModelError, match=r"^block 1: mlp.up_proj is PatchBranch; no"):
        block_specs(model)
    model = tiny_llama(4)
    model.model.layers[2].self_attn = PatchBranch("attention", 2, 2, fill="pass")
    with pytest.raises(UnsupportedModelError, match=r"^block 2: self_attn is a 'pass' stand-in"):
        block_specs(model)


def test_hetero_qwen2_carries_the_qkv_biases(tmp_path):
    """Qwen2 (q/k/v biases, no output bias) in the per-block form: the exported code's Llama
    attention takes ``attention_bias`` for all four projections, so the output projection gets
    a zero bias; loaded without depthcut it gives depthcut.load's logits."""
    from transformers import AutoModelForCausalLM

    model = tiny_qwen2(6, sliding=False, random_bias=True)
    save_run(tmp_path / "run", model, mixed_plan(model))
    out = export_run(tmp_path / "run", "hf-hetero", tmp_path / "hetero")
    config = json.loads((out / "config.json").read_text())
    assert config["attention_bias"] is True and config["model_type"] == "nemotron-nas"
    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ids = torch.randint(3, 97, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(
            remote(input_ids=ids).logits, reloaded_logits(out.parent / "run", ids)
        )
    q_bias = remote.model.layers[1].self_attn.q_proj.bias
    assert q_bias is not None and q_bias.abs().sum() > 0  # the source's biases, not zeros
    assert remote.model.layers[1].self_attn.o_proj.bias.abs().sum() == 0
    reloaded = dc.load(tmp_path / "run")[0]
    added = 32 * 5  # a zero output bias (hidden 32) in each of the 5 blocks with attention
    total = sum(p.numel() for p in reloaded.parameters()) + added
    assert sum(p.numel() for p in remote.parameters()) == total


def test_hetero_refuses_qwen2_sliding_window_in_one_line(tmp_path):
    model = tiny_qwen2(6, sliding=True)
    save_run(tmp_path / "run", model, mixed_plan(model))
    with pytest.raises(DepthcutError, match="use_sliding_window=True") as err:
        export_run(tmp_path / "run", "hf-hetero", tmp_path / "hetero")
    assert "\n" not in str(err.value) and not (tmp_path / "hetero").exists()
