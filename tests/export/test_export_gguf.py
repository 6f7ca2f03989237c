"""GGUF exports checked in llama.cpp itself (the llama_cpp binding): per-layer arrays, top-100
next-token log-probabilities within 1e-2 of PyTorch with the same top-5 at float32, and 16
greedy tokens equal (llama.cpp decodes with its KV cache). Needs ``make llama``; under CI a
missing binding fails instead of skipping."""

from __future__ import annotations

import json

import pytest

import depthcut as dc
from depthcut.formats import llamacpp
from depthcut.formats.gguf_file import compare, expected_arrays, write_gguf
from depthcut.formats.run import export_run
from depthcut.graph.structure import discover_structure
from depthcut.methods import describe
from depthcut.planning.plan import Action, Plan
from support import make_plan, prune_run, require_module, save_run
from tiny import tiny_llama, tiny_smol_vocab

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _binding():
    require_module("llama_cpp", "llama-cpp-python (`make llama` installs it)")


def hetero_plan(model) -> Plan:
    """Block 0 without attention, blocks 2 and 5 without MLP (5 is the last), per-layer FFN
    widths 153 and 100, block 4 with one of its two KV groups."""
    return Plan(
        [
            Action("attention", 0, "model.layers.0.self_attn", 1),
            Action("mlp", 2, "model.layers.2.mlp", 1),
            Action("mlp", 5, "model.layers.5.mlp", 1),
            Action("neuron", 1, "model.layers.1.mlp", 1, None, tuple(range(7))),
            Action("neuron", 3, "model.layers.3.mlp", 1, None, tuple(range(60))),
            Action("head", 4, "model.layers.4.self_attn", 1, None, (0,)),
        ],
        describe(model, discover_structure(model)),
    )


def test_hetero_gguf_in_llamacpp(tmp_path, smol_tokenizer):
    model = tiny_smol_vocab()
    pruned = save_run(tmp_path / "run", model, hetero_plan(model), smol_tokenizer)
    out = export_run(tmp_path / "run", "gguf", tmp_path / "gguf")
    path = out / "model-f32.gguf"
    arrays = llamacpp.read_arrays(path)
    assert arrays["arch"] == "deci"
    assert arrays["block_count"] == 6
    # block 0 carries one zero head: llama.cpp sizes every head from layer 0's head count
    assert arrays["heads"] == [1, 4, 4, 4, 2, 4]
    assert arrays["kv_heads"] == [1, 2, 2, 2, 1, 2]
    # blocks 2 and 5 (attention, no MLP) carry a zero FFN of width 32: deci skips a block's
    # attention output too when its FFN length is 0
    assert arrays["ffn"] == [160, 153, 32, 100, 160, 32]
    assert expected_arrays(pruned)["ffn"] == arrays["ffn"]
    result = compare(pruned, path, smol_tokenizer)
    assert result["max_logprob_gap"] <= 1e-3 and result["same_top5"] and result["greedy_equal"]
    assert "greedy 16 tokens equal" in json.loads((out / "export.json").read_text())["verified"]


def test_qwen2_hetero_gguf_carries_its_biases(tmp_path, smol_tokenizer):
    """Qwen2's q/k/v biases reach llama.cpp's deci graph (optional bias tensors there) and the
    export matches PyTorch in llama.cpp itself."""
    from gguf import GGUFReader

    from tiny import tiny_qwen2

    model = tiny_qwen2(
        6,
        sliding=False,
        random_bias=True,
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=160,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=None,
    )
    # written from memory: a run saved with SmolLM2's tokenizer would reload it as a Qwen2
    # tokenizer (transformers picks the class from the model type), whose pre-tokenizer the
    # converter does not know under that vocabulary
    pruned = dc.apply(model, hetero_plan(model))
    write_gguf(pruned, smol_tokenizer, tmp_path)
    path = tmp_path / "model-f32.gguf"
    assert llamacpp.read_arrays(path)["arch"] == "deci"
    names = {t.name for t in GGUFReader(path).tensors}
    assert {"blk.1.attn_q.bias", "blk.1.attn_k.bias", "blk.1.attn_v.bias"} <= names
    result = compare(pruned, path, smol_tokenizer)
    assert result["max_logprob_gap"] <= 1e-3 and result["same_top5"] and result["greedy_equal"]


def test_zero_ffn_is_needed_for_attention_only_blocks(tmp_path, smol_tokenizer, monkeypatch):
    """The evidence for the zero FFN: written with FFN length 0, llama.cpp drops the block's
    attention too, and its output no longer matches PyTorch."""
    from depthcut.formats import gguf_file

    model = tiny_smol_vocab()
    pruned = save_run(tmp_path / "run", model, make_plan(model, [("mlp", 2)])[0], smol_tokenizer)
    monkeypatch.setattr(gguf_file, "ZERO_FFN", 0)
    monkeypatch.setattr(gguf_file, "gguf_layout", _unpadded_layout)
    out = export_run(tmp_path / "run", "gguf", tmp_path / "gguf", verify=False)
    assert llamacpp.read_arrays(out / "model-f32.gguf")["ffn"] == [160, 160, 0, 160, 160, 160]
    assert compare(pruned, out / "model-f32.gguf")["max_logprob_gap"] > 1e-1


def _unpadded_layout(model):
    from depthcut.formats.layout import model_layout

    return model_layout(model)


def test_uniform_gguf_uses_the_source_architecture(tmp_path, smol_tokenizer):
    cfg = dc.PruneConfig(units=("block",), budget=dc.Budget(0.3, count="non_embedding"))
    pruned = prune_run(tmp_path / "run", tiny_smol_vocab(), cfg, smol_tokenizer)
    out = export_run(tmp_path / "run", "gguf", tmp_path / "gguf", verify=False)
    arrays = llamacpp.read_arrays(out / "model-f32.gguf")
    assert arrays["arch"] == "llama" and arrays["block_count"] == len(pruned.model.layers) < 6
    result = compare(pruned, out / "model-f32.gguf", smol_tokenizer)
    assert result["max_logprob_gap"] <= 1e-3 and result["same_top5"] and result["greedy_equal"]


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_quantized_gguf_runs(tmp_path, smol_tokenizer, quant):
    model = tiny_smol_vocab()
    pruned = save_run(tmp_path / "run", model, hetero_plan(model), smol_tokenizer)
    out = export_run(tmp_path / "run", "gguf", tmp_path / "gguf", quant=quant, verify=False)
    path = out / f"model-{quant}.gguf"
    assert llamacpp.read_arrays(path)["ffn"] == [160, 153, 32, 100, 160, 32]
    params = sum(p.numel() for p in pruned.parameters())
    # well under the f32 bytes (64-wide rows are no multiple of 256, so the k-quant falls
    # back to 5- and 8-bit blocks on this tiny model)
    assert path.stat().st_size < params * 4 * 0.45
    result = compare(pruned, path, smol_tokenizer)
    assert result["top1_agreement"] >= (0.85 if quant == "q8_0" else 0.6), result


def _imatrix_sums(path) -> dict:
    """llama-imatrix's per-tensor sums of squared inputs (its GGUF format)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {t.name.removesuffix(".in_sum2"): t.data for t in reader.tensors if "in_sum2" in t.name}


def test_imatrix_gguf_follows_the_pruned_widths(tmp_path, smol_tokenizer):
    """llama.cpp's importance matrix of the calibration text is computed on the pruned model
    (per-layer input widths of the deci arrays) and changes the Q4_K_M weights."""
    model = tiny_smol_vocab()
    pruned = save_run(tmp_path / "run", model, hetero_plan(model), smol_tokenizer)
    spec = llamacpp.Imatrix("wiki", chunks=4, ctx=128)
    with_matrix = export_run(
        tmp_path / "run", "gguf", tmp_path / "im", "q4_k_m+imatrix", verify=False, imatrix=spec
    )
    plain = export_run(tmp_path / "run", "gguf", tmp_path / "plain", "q4_k_m", verify=False)
    note = json.loads((with_matrix / "export.json").read_text())
    assert note["imatrix"] == {"file": "imatrix.gguf", "source": "wiki", "chunks": 4, "ctx": 128}
    sums = _imatrix_sums(with_matrix / "imatrix.gguf")
    # FFN inputs: the pruned widths (2 and 5 are MLP-free: llama.cpp's zero FFN of 32)
    assert [sums[f"blk.{n}.ffn_down.weight"].size for n in range(6)] == [160, 153, 32, 100, 160, 32]
    assert sums["blk.0.attn_q.weight"].size == 64 and (sums["blk.3.ffn_up.weight"] > 0).all()
    assert not (sums["blk.2.ffn_down.weight"]).any()  # the zero FFN's inputs are exactly 0
    path = with_matrix / "model-q4_k_m-imatrix.gguf"
    assert llamacpp.read_arrays(path)["ffn"] == [160, 153, 32, 100, 160, 32]
    assert path.read_bytes() != (plain / "model-q4_k_m.gguf").read_bytes()
    result = compare(pruned, path, smol_tokenizer)
    assert result["top1_agreement"] >= 0.6, result
    assert not list(with_matrix.glob("*.txt"))  # the calibration text file is gone


def test_imatrix_without_the_tools_is_refused_before_loading(tmp_path, monkeypatch):
    from depthcut.formats.common import ExportError

    monkeypatch.setattr(llamacpp, "tool_path", lambda name: None)
    with pytest.raises(ExportError, match="llama-imatrix and llama-quantize not installed; run"):
        export_run(tmp_path / "missing-run", "gguf", tmp_path / "out", "q4_k_m+imatrix")
    assert not (tmp_path / "out").exists()


def test_smollm2_block_and_sublayer_gguf(tmp_path):
    """The packaged SmolLM2-135M, pruned by blocks (llama arch) and by sublayers (deci)."""
    model, tok = dc.load_model("smollm2-135m")
    picks = {
        "block": [("block", 20), ("block", 24), ("block", 26)],
        "sublayer": [("attention", 0), ("mlp", 25), ("attention", 27)],
    }
    for name, units in picks.items():
        run = tmp_path / name
        pruned = save_run(run, model, make_plan(model, units)[0], tok)
        out = export_run(run, "gguf", tmp_path / f"{name}-gguf", verify=False)
        arrays = llamacpp.read_arrays(out / "model-f32.gguf")
        assert arrays["arch"] == ("llama" if name == "block" else "deci")
        assert arrays["block_count"] == (27 if name == "block" else 30)
        result = compare(pruned, out / "model-f32.gguf", tok)
        # f32 end to end over a 49k vocabulary: 1.3e-3 measured with the portable AVX2 build of
        # llama.cpp (`make llama`), under 1e-3 with a native AVX-512 one
        assert result["max_logprob_gap"] <= 2e-3, result
        assert result["same_top5"] and result["greedy_equal"], result


def test_cli_quantize_gguf_q4_k_m(tmp_path, smol_tokenizer, capsys):
    from depthcut.cli import main

    model = tiny_smol_vocab()
    save_run(tmp_path / "run", model, hetero_plan(model), smol_tokenizer)
    out = tmp_path / "q4"
    assert main(
        ["quantize", str(tmp_path / "run"), "--method", "gguf-q4_k_m", "--out", str(out)]
    ) in (0, None)
    note = json.loads((out / "export.json").read_text())
    assert note["type"] == "q4_k_m" and "llama.cpp loads deci" in note["verified"]
    assert "GGUF q4_k_m ->" in capsys.readouterr().out


def test_cli_quantize_gguf_q4_k_m_imatrix(tmp_path, smol_tokenizer, capsys):
    from depthcut.cli import main

    model = tiny_smol_vocab()
    save_run(tmp_path / "run", model, hetero_plan(model), smol_tokenizer)
    out = tmp_path / "q4i"
    args = ["quantize", str(tmp_path / "run"), "--method", "gguf-q4_k_m+imatrix"]
    assert main([*args, "--n-samples", "3", "--seq-len", "64", "--out", str(out)]) in (0, None)
    note = json.loads((out / "export.json").read_text())
    assert note["type"] == "q4_k_m+imatrix" and note["imatrix"]["chunks"] == 3
    assert "llama.cpp loads deci" in note["verified"]
    assert sorted(p.name for p in out.iterdir()) == [
        "export.json",
        "imatrix.gguf",
        "model-q4_k_m-imatrix.gguf",
    ]
    assert "GGUF q4_k_m+imatrix ->" in capsys.readouterr().out


def test_tokenizer_the_converter_cannot_express_is_one_line(tmp_path):
    """tiny_llama's word-level tokenizer has no GGUF form: the converter's own reason, one
    line, and nothing written."""
    from depthcut.formats.common import ExportError

    model = tiny_llama(4)
    save_run(tmp_path / "run", model, make_plan(model, [("block", 2)])[0])  # tiny_tokenizer
    with pytest.raises(ExportError, match="llama.cpp's converter failed: ") as err:
        export_run(tmp_path / "run", "gguf", tmp_path / "gguf", verify=False)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_the_one_quantize_list_matches_what_llama_cpp_makes():
    from depthcut.config import GGUF_TYPES, INT4_METHODS, INT8_METHODS, QUANTIZE_METHODS
    from depthcut.formats import llamacpp
    from depthcut.quantization import METHODS

    # every GGUF type of the list is made by llama.cpp's converter or its quantizer, each
    # k-quant with or without the importance matrix
    kquants = set(llamacpp.QUANT_FTYPES)
    with_imatrix = {f"{k}{llamacpp.IMATRIX}" for k in kquants}
    assert set(GGUF_TYPES) == set(llamacpp.CONVERTER_TYPES) | kquants | with_imatrix
    assert METHODS == INT8_METHODS and "gguf-q4_k_m" in QUANTIZE_METHODS
    assert len(QUANTIZE_METHODS) == len(INT8_METHODS) + len(INT4_METHODS) + len(GGUF_TYPES)
