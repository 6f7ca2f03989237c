"""``--format gguf``: a GGUF file for llama.cpp, written by llama.cpp's own converter.

Uniform results go through the standard architecture of the source model (from the ``hf``
export); heterogeneous ones (blocks without attention or MLP, per-block widths and KV heads)
through the ``deci`` architecture's per-layer arrays (from the ``hf-hetero`` export).

llama.cpp's ``deci`` graph skips the *whole rest of a block* whose FFN length is 0 — the
attention output and its residual add included — so a block with attention but no MLP is
written with a tiny all-zero FFN (width :data:`ZERO_FFN`: its output is exactly 0) instead.
llama.cpp also takes the head size of *every* layer from layer 0's head count (n_embd /
n_head(0), before ``key_length``), so a first block without attention gets one all-zero head
(exactly 0 output; one head's matmuls and KV slot of cost) instead of none.
Quantized types: f32, f16 and q8_0 from the converter; q4_k_m and other k-quants through
llama.cpp's quantizer from the f32 file; ``q4_k_m+imatrix`` (any k-quant + ``+imatrix``) with
the importance matrix ``llama-imatrix`` computes on the f32 file over calibration text, kept
beside the model as ``imatrix.gguf``.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from depthcut.config import GGUF_TYPES
from depthcut.errors import ConfigError
from depthcut.formats import llamacpp
from depthcut.formats.common import (
    ExportError,
    greedy,
    prompts,
    reference_logits,
    write_config,
    write_safetensors,
)
from depthcut.formats.hetero import hetero_config
from depthcut.formats.hf import uniform_config
from depthcut.formats.layout import (
    LLAMA_FAMILY,
    Layout,
    model_layout,
    require_full_attention,
    require_plain_blocks,
)
from depthcut.hftypes import HFModel

ZERO_FFN = 32
QUANTS = GGUF_TYPES  # each made by llama.cpp's converter or quantizer (tested)
TOP_K, TOP_SAME, LOGPROB_TOL, GREEDY_TOKENS = 100, 5, 1e-2, 16


def check_quant(quant: str) -> None:
    if quant not in QUANTS:
        raise ConfigError(f"unknown GGUF type {quant!r}; use one of {', '.join(QUANTS)}")


def _zero_ffn(state: dict, prefix: str, like: torch.Tensor) -> None:
    hidden = like.shape[1]
    state[f"{prefix}.post_attention_layernorm.weight"] = like.new_ones(hidden)
    for name, shape in (
        ("gate_proj", (ZERO_FFN, hidden)),
        ("up_proj", (ZERO_FFN, hidden)),
        ("down_proj", (hidden, ZERO_FFN)),
    ):
        state[f"{prefix}.mlp.{name}.weight"] = like.new_zeros(shape)


def _zero_head(state: dict, prefix: str, like: torch.Tensor, head_dim: int) -> None:
    hidden = like.shape[1]
    state[f"{prefix}.input_layernorm.weight"] = like.new_ones(hidden)
    for name in ("q_proj", "k_proj", "v_proj"):
        state[f"{prefix}.self_attn.{name}.weight"] = like.new_zeros(head_dim, hidden)
    state[f"{prefix}.self_attn.o_proj.weight"] = like.new_zeros(hidden, head_dim)


def gguf_layout(model: HFModel) -> Layout:
    """The layout with llama.cpp's two ``deci`` traps padded by exact zeros: an
    attention-only block gets a zero FFN of width ZERO_FFN, an attention-free first block one
    zero head."""
    layout = model_layout(model)
    blocks, state = [], dict(layout.state)
    like = state["model.embed_tokens.weight"]
    for n, spec in enumerate(layout.blocks):
        prefix = f"model.layers.{n}"
        if spec.ffn == 0:
            spec = replace(spec, ffn=ZERO_FFN)
            _zero_ffn(state, prefix, like)
        if n == 0 and spec.heads == 0:
            spec = replace(spec, heads=1, kv_heads=1)
            _zero_head(state, prefix, like, layout.head_dim)
        blocks.append(spec)
    return Layout(blocks, layout.head_dim, state)


def _stage(model: HFModel, tokenizer, folder: Path) -> str:
    """The HF directory the converter reads; returns the GGUF architecture route."""
    if model.config.model_type not in LLAMA_FAMILY:
        require_plain_blocks(model)
        model.save_pretrained(folder)
        route = "source architecture"
    else:
        layout = gguf_layout(model)
        if layout.uniform and all(not b.identities for b in layout.blocks):
            config = uniform_config(model, layout) | {"architectures": [type(model).__name__]}
            route = "source architecture"
        else:
            require_full_attention(model.config)
            layout = layout.with_output_bias()
            config = hetero_config(model, layout)
            config.pop("per_layer_config"), config.pop("auto_map")
            for block in config["block_configs"]:  # the converter indexes it; its value is
                block["ffn"].setdefault("ffn_mult", 1.0)  # replaced by the exact width
            route = "per-layer arrays"
        write_config(config, folder)
        write_safetensors(layout.state, folder)
    if tokenizer is None:
        raise ExportError("the run has no tokenizer; a GGUF file needs one")
    tokenizer.save_pretrained(folder)
    return route


def gguf_name(quant: str) -> str:
    """The file a GGUF export of type ``quant`` writes (``q4_k_m+imatrix``:
    ``model-q4_k_m-imatrix.gguf``)."""
    return f"model-{quant.replace('+', '-')}.gguf"


def write_gguf(
    model: HFModel,
    tokenizer,
    folder: Path,
    quant: str = "f32",
    imatrix: llamacpp.Imatrix | None = None,
    threads: int = 2,
    summary: bool = True,
) -> str:
    """``folder/model-QUANT.gguf`` (and ``imatrix.gguf`` for a ``+imatrix`` type, computed
    on ``imatrix``'s text, default :class:`~depthcut.formats.llamacpp.Imatrix`); returns what
    the file declares (``summary=False``: only its name, without reading it back)."""
    check_quant(quant)
    kind = quant.removesuffix(llamacpp.IMATRIX)
    first = quant if quant in llamacpp.CONVERTER_TYPES else "f32"
    with tempfile.TemporaryDirectory(prefix="depthcut-gguf-") as tmp:
        stage = Path(tmp) / "hf"
        stage.mkdir()
        route = _stage(model, tokenizer, stage)
        target = folder / gguf_name(quant)
        converted = target if first == quant else Path(tmp) / "model-f32.gguf"
        llamacpp.convert(stage, converted, first)
        matrix = None
        if kind != quant:
            matrix = folder / "imatrix.gguf"
            llamacpp.importance_matrix(converted, imatrix or llamacpp.Imatrix(), matrix, threads)
        if converted != target:
            llamacpp.quantize(converted, target, kind, matrix)
    if not summary:
        return target.name
    arrays = llamacpp.read_arrays(target)
    return f"{target.name}: {arrays['arch']} ({route}), {arrays['block_count']} blocks"


def expected_arrays(model: HFModel) -> dict:
    layout = gguf_layout(model)
    return {
        "block_count": len(layout.blocks),
        "heads": [b.heads for b in layout.blocks],
        "kv_heads": [b.kv_heads for b in layout.blocks],
        "ffn": [b.ffn for b in layout.blocks],
    }


def _same(declared, expected: list[int]) -> bool:
    values = declared if isinstance(declared, list) else [declared] * len(expected)
    return list(values) == expected


def check_arrays(model: HFModel, path: Path) -> dict:
    """The GGUF's block count and per-layer arrays must be the pruned model's."""
    got, want = llamacpp.read_arrays(path), expected_arrays(model)
    if got["block_count"] != want["block_count"]:
        raise ExportError(
            f"GGUF declares {got['block_count']} blocks, the model has {want['block_count']}"
        )
    for key in ("heads", "kv_heads", "ffn"):
        if not _same(got[key], want[key]):
            raise ExportError(
                f"GGUF {key} per layer {got[key]} differ from the model's {want[key]}"
            )
    return got


def _same_top(got: torch.Tensor, ref: torch.Tensor) -> bool:
    """llama.cpp's top-5 tokens are PyTorch's, in order, up to ties: where the two orders
    differ, PyTorch's log-probabilities of the two choices agree within LOGPROB_TOL."""
    ours = ref.gather(-1, got.topk(TOP_SAME, -1).indices)
    theirs = ref.topk(TOP_SAME, -1).values
    return bool(((ours - theirs).abs() <= LOGPROB_TOL).all())


def compare(model: HFModel, path: Path, tokenizer=None) -> dict:
    """llama.cpp against PyTorch on fixed prompts: top-100 log-probability gap, top-5 and
    16 greedy tokens (llama.cpp decodes with its KV cache)."""
    ids = prompts(model, tokenizer)
    ran = llamacpp.evaluate(path, ids.tolist(), GREEDY_TOKENS)
    ref = torch.log_softmax(reference_logits(model, ids), dim=-1)
    got = torch.tensor(np.asarray(ran["logprobs"], dtype=np.float32))
    top = ref.topk(TOP_K, dim=-1).indices
    gap = (got.gather(-1, top) - ref.gather(-1, top)).abs().max().item()
    same_top = _same_top(got, ref)
    top1 = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    greedy_equal = greedy(model, ids, GREEDY_TOKENS).tolist() == ran["greedy"]
    return {
        "max_logprob_gap": gap,
        "same_top5": same_top,
        "top1_agreement": top1,
        "greedy_equal": greedy_equal,
    }


def verify_gguf(model: HFModel, path: Path, quant: str, tokenizer=None) -> str:
    arrays = check_arrays(model, path)
    result = compare(model, path, tokenizer)
    summary = (
        f"llama.cpp loads {arrays['arch']} with the model's per-layer arrays; top-100 "
        f"log-prob gap {result['max_logprob_gap']:.3g}, top-1 agreement "
        f"{result['top1_agreement']:.0%}, greedy 16 tokens "
        f"{'equal' if result['greedy_equal'] else 'differ'}"
    )
    exact = quant == "f32"
    if exact and not (
        result["max_logprob_gap"] <= LOGPROB_TOL and result["same_top5"] and result["greedy_equal"]
    ):
        raise ExportError(f"f32 GGUF does not match PyTorch: {summary}")
    if not exact and result["top1_agreement"] < 0.5:
        raise ExportError(f"{quant} GGUF disagrees with PyTorch: {summary}")
    return summary
