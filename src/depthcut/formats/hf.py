"""``--format hf``: a plain checkpoint of the source architecture, for uniform results.

Block pruning and uniform width pruning keep every block alike, so the original architecture
class describes the result: layers renumbered, ``num_hidden_layers`` and every per-layer list
cut to the kept blocks, head counts / ``head_dim`` / ``intermediate_size`` written. Llama-family
models go through :mod:`depthcut.formats.layout` (blocks emptied by sublayer pruning are
dropped, fine-pruned identities become matrices); other architectures are written as they are
in memory. Verified: plain ``AutoModelForCausalLM.from_pretrained`` gives the logits of the
in-memory model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from depthcut.errors import UnsupportedModelError
from depthcut.formats.common import (
    ExportError,
    prompts,
    reference_logits,
    write_config,
    write_safetensors,
)
from depthcut.formats.layout import (
    LLAMA_FAMILY,
    Layout,
    cut_per_layer_lists,
    model_layout,
    require_plain_blocks,
)
from depthcut.hftypes import HFModel


def uniform_config(model: HFModel, layout: Layout) -> dict:
    """The source config with the exported block count, per-layer lists and widths."""
    config = model.config.to_dict() | cut_per_layer_lists(model, layout)
    first = layout.blocks[0]
    config |= {
        "num_hidden_layers": len(layout.blocks),
        "num_attention_heads": first.heads,
        "num_key_value_heads": first.kv_heads,
        "intermediate_size": first.ffn,
        "head_dim": layout.head_dim,
    }
    return config


def _shape(spec) -> str:
    attention = f"{spec.heads}/{spec.kv_heads} heads" if spec.heads else "no attention"
    return f"{attention}, " + (f"FFN {spec.ffn}" if spec.ffn else "no MLP")


def _not_uniform(layout: Layout) -> UnsupportedModelError:
    first = layout.blocks[0]
    odd = next((b for b in layout.blocks if _shape(b) != _shape(first)), first)
    return UnsupportedModelError(
        f"block {odd.source} ({_shape(odd)}) differs from block {first.source} ({_shape(first)}):"
        " a plain checkpoint cannot describe it; use --format hf-hetero or gguf"
    )


def write_hf(model: HFModel, tokenizer, folder: Path) -> str:
    """Write the plain checkpoint into ``folder``; returns a one-line description."""
    if model.config.model_type in LLAMA_FAMILY:
        layout = model_layout(model)
        if not layout.uniform:
            raise _not_uniform(layout)
        config = uniform_config(model, layout)
        config["architectures"] = [type(model).__name__]
        write_config(config, folder)
        write_safetensors(layout.state, folder)
        detail = f"{len(layout.blocks)} blocks"
    else:
        require_plain_blocks(model)
        model.save_pretrained(folder)
        detail = f"{model.config.num_hidden_layers} blocks, saved as in memory"
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return detail


def verify_hf(model: HFModel, folder: Path, tokenizer=None) -> str:
    """Plain ``from_pretrained`` must reproduce the in-memory logits."""
    from transformers import AutoModelForCausalLM

    try:
        plain = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, local_files_only=True
        ).eval()
    except (RuntimeError, ValueError, OSError) as err:
        raise ExportError(
            f"plain from_pretrained cannot load the export ({str(err).splitlines()[0][:160]}); "
            "use --format hf-hetero"
        ) from None
    ids = prompts(model, tokenizer)
    diff = (reference_logits(plain, ids) - reference_logits(model, ids)).abs().max().item()
    if diff > 1e-4:
        raise ExportError(f"plain from_pretrained logits differ by {diff:.3g}; use hf-hetero")
    return f"plain from_pretrained logits match (max |diff| {diff:.2g})"
