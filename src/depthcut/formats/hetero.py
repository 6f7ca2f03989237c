"""``--format hf-hetero``: every plan of a Llama-family model as a self-contained Hugging Face
directory (``trust_remote_code``), in the Nemotron-NAS ``block_configs`` form.

The directory holds ``modeling_depthcut.py`` (depthcut's own small modeling file: torch and
transformers only), a config with ``block_configs`` (what vLLM's ``DeciLMForCausalLM`` and
llama.cpp's converter read, plus exact per-block head counts and FFN widths) and
``per_layer_config`` (transformers' own per-layer overrides, for readers that understand it),
the standard-named weights and the tokenizer. Verified in a subprocess that cannot import
depthcut: logits equal to the in-memory model's, cached ``generate()`` equal to uncached.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from depthcut.formats.common import (
    ExportError,
    greedy,
    prompts,
    reference_logits,
    write_config,
    write_safetensors,
)
from depthcut.formats.layout import (
    BlockSpec,
    Layout,
    cut_per_layer_lists,
    model_layout,
    require_full_attention,
)
from depthcut.hftypes import HFModel

MODELING = Path(__file__).with_name("modeling_depthcut.py")
AUTO_MAP = {
    "AutoConfig": "modeling_depthcut.DeciLMConfig",
    "AutoModelForCausalLM": "modeling_depthcut.DeciLMForCausalLM",
}
GREEDY_TOKENS = 16


def ffn_mult(width: int, hidden: int) -> float | None:
    """The Nemotron-NAS ``ffn_mult`` whose width (2·mult·hidden/3 rounded up to a multiple of
    256, as vLLM and llama.cpp's converter compute it) is exactly ``width``, else None."""
    mult = round(width * 3 / (2 * hidden), 6)
    rounded = int(2 * mult * hidden / 3)
    rounded = -(-rounded // 256) * 256
    return mult if width and rounded == width else None


def block_config(spec: BlockSpec, hidden: int) -> dict:
    """One ``block_configs`` entry: Nemotron-NAS keys plus exact sizes; ``ffn_mult`` only
    where it reproduces the width (readers then take ``intermediate_size``)."""
    no_attention, no_ffn = spec.heads == 0, spec.ffn == 0
    ffn: dict[str, Any] = {"no_op": no_ffn, "replace_with_linear": False}
    ffn["intermediate_size"] = spec.ffn
    if (mult := ffn_mult(spec.ffn, hidden)) is not None:
        ffn["ffn_mult"] = mult
    return {
        "attention": {
            "no_op": no_attention,
            "replace_with_linear": False,
            "n_heads_in_group": None if no_attention else spec.heads // spec.kv_heads,
            "num_heads": spec.heads,
            "num_key_value_heads": spec.kv_heads,
        },
        "ffn": ffn,
    }


def per_layer_overrides(layout: Layout) -> dict[str, dict]:
    """transformers' ``per_layer_config`` form: sizes per layer and skipped sublayers."""
    out = {}
    for n, b in enumerate(layout.blocks):
        skip = [name for name, gone in (("self_attn", b.heads == 0), ("mlp", b.ffn == 0)) if gone]
        sizes = {"num_attention_heads": b.heads, "num_key_value_heads": b.kv_heads}
        out[str(n)] = sizes | {"intermediate_size": b.ffn, "skip": skip}
    return out


def hetero_config(model: HFModel, layout: Layout) -> dict:
    config = model.config.to_dict() | cut_per_layer_lists(model, layout)
    config |= {
        "architectures": ["DeciLMForCausalLM"],
        "model_type": "nemotron-nas",
        "auto_map": AUTO_MAP,
        "num_hidden_layers": len(layout.blocks),
        "head_dim": layout.head_dim,
        "block_configs": [block_config(b, model.config.hidden_size) for b in layout.blocks],
        "per_layer_config": per_layer_overrides(layout),
        "allow_global_per_layer_attribute_access": True,
        "attention_bias": layout.attention_bias,
        "depthcut_identity_matrices": {
            str(n): list(b.identities) for n, b in enumerate(layout.blocks) if b.identities
        },
    }
    return config


def write_hetero(model: HFModel, tokenizer, folder: Path) -> str:
    require_full_attention(model.config)
    layout = model_layout(model).with_output_bias()
    write_config(hetero_config(model, layout), folder)
    write_safetensors(layout.state, folder)
    shutil.copyfile(MODELING, folder / MODELING.name)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    attention = sum(b.heads > 0 for b in layout.blocks)
    ffn = sum(b.ffn > 0 for b in layout.blocks)
    line = f"{len(layout.blocks)} blocks ({attention} with attention, {ffn} with an MLP)"
    return line + vllm_caveat(layout, model.config.num_attention_heads)


def vllm_caveat(layout: Layout, heads: int) -> str:
    """vLLM's Nemotron-NAS model gives every attention block all query heads (it reads only
    ``n_heads_in_group``): blocks whose query heads were pruned do not load there."""
    odd = [n for n, b in enumerate(layout.blocks) if b.heads and b.heads != heads]
    return f"; vLLM cannot load it (query heads pruned in blocks {odd})" if odd else ""


CHECK = r"""
import importlib.abc, sys, json, torch

class NoDepthcut(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "depthcut" or name.startswith("depthcut."):
            raise ImportError("depthcut must not be importable here")

sys.meta_path.insert(0, NoDepthcut())
folder, ids_file, out_file, new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
model.eval()
ids = torch.load(ids_file)
with torch.no_grad():
    logits = model(input_ids=ids, use_cache=False).logits
    kw = dict(max_new_tokens=new, do_sample=False, pad_token_id=0)
    cached = model.generate(ids, use_cache=True, **kw)[:, ids.shape[1]:]
    plain = model.generate(ids, use_cache=False, **kw)[:, ids.shape[1]:]
assert not any(m == "depthcut" or m.startswith("depthcut.") for m in sys.modules)
torch.save({"logits": logits, "cached": cached, "plain": plain}, out_file)
"""


def run_clean(folder: Path, ids: torch.Tensor, new: int) -> dict:
    """Load ``folder`` with trust_remote_code in a subprocess that cannot import depthcut."""
    ids_file = folder.parent / f".{folder.name}.ids.pt"
    out_file = folder.parent / f".{folder.name}.check.pt"
    torch.save(ids, ids_file)
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHECK, str(folder), str(ids_file), str(out_file), str(new)],
            capture_output=True,
            text=True,
            cwd=folder.parent,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ExportError(f"the hf-hetero export does not load without depthcut: {last}")
        return torch.load(out_file)
    finally:
        ids_file.unlink(missing_ok=True)
        out_file.unlink(missing_ok=True)


def verify_hetero(model: HFModel, folder: Path, tokenizer=None) -> str:
    ids = prompts(model, tokenizer)
    got = run_clean(folder, ids, GREEDY_TOKENS)
    diff = (got["logits"] - reference_logits(model, ids)).abs().max().item()
    if diff > 1e-4:
        raise ExportError(f"hf-hetero logits differ from depthcut.load's by {diff:.3g}")
    if not torch.equal(got["cached"], got["plain"]):
        raise ExportError("hf-hetero generate() with the KV cache differs from without it")
    if not torch.equal(got["cached"], greedy(model, ids, GREEDY_TOKENS)):
        raise ExportError("hf-hetero greedy tokens differ from depthcut.load's")
    return (
        f"loads without depthcut (trust_remote_code); logits match (max |diff| {diff:.2g}); "
        f"{GREEDY_TOKENS} greedy tokens equal with and without cache"
    )
