"""What a pruned Llama-family model is, block by block, in the terms runtimes understand.

Every runtime layout (a plain Hugging Face checkpoint, the heterogeneous Nemotron-NAS form,
llama.cpp's ``deci`` arrays) describes a decoder block by three numbers: query heads, KV heads
(0 heads = no attention) and FFN width (0 = no MLP). :func:`model_layout` reads them from the
*physical* pruned model — whatever family of plan produced it — and gives the state dict under
the standard Llama tensor names, blocks renumbered. A fine-pruned linear that became an
identity is written as an identity matrix (exact; it costs its matmul again at run time, which
the export note reports). Anything else no format can express is refused with the block and
the module named.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from depthcut.errors import UnsupportedModelError
from depthcut.hftypes import HFModel
from depthcut.surgery.hf import per_layer_keys
from depthcut.surgery.modules import PatchBranch, ZeroBranch

# decoders whose blocks are Llama's (RMSNorm, rotary attention, SwiGLU MLP); Qwen2 adds q/k/v
# biases, which every per-layer form carries (llama.cpp's ``deci`` reads them as optional
# tensors, the exported code as ``attention_bias`` with a zero output bias)
LLAMA_FAMILY = ("llama", "mistral", "qwen2")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class BlockSpec:
    """One exported block: ``source`` is its index in the pruned model."""

    source: int
    heads: int
    kv_heads: int
    ffn: int
    identities: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self.heads == 0 and self.ffn == 0


@dataclass
class Layout:
    """Blocks (empty ones dropped), head_dim, and the standard-named state dict."""

    blocks: list[BlockSpec]
    head_dim: int
    state: dict[str, torch.Tensor]

    @property
    def attention_bias(self) -> bool:
        """Whether the attention projections carry biases (Qwen2's q / k / v)."""
        return any(k.endswith("self_attn.q_proj.bias") for k in self.state)

    def with_output_bias(self) -> Layout:
        """For forms with one ``attention_bias`` switch for all four projections (the Llama
        attention of the exported code, vLLM's Nemotron-NAS): a zero ``o_proj`` bias where the
        source has none (exact: it adds zeros)."""
        state = dict(self.state)
        for n, b in enumerate(self.blocks):
            key = f"model.layers.{n}.self_attn.o_proj.bias"
            weight = state.get(f"model.layers.{n}.self_attn.o_proj.weight")
            if self.attention_bias and b.heads and weight is not None and key not in state:
                state[key] = weight.new_zeros(weight.shape[0])
        return Layout(self.blocks, self.head_dim, state)

    @property
    def uniform(self) -> bool:
        """Every block has attention and an MLP, of the same sizes."""
        first = self.blocks[0]
        shape = (first.heads, first.kv_heads, first.ffn)
        same = all((b.heads, b.kv_heads, b.ffn) == shape for b in self.blocks)
        return same and first.heads > 0 and first.ffn > 0

    @property
    def added_identity_params(self) -> int:
        return sum(self.state[k].numel() for k in self._identity_keys())

    def _identity_keys(self) -> list[str]:
        return [
            f"model.layers.{n}.mlp.{name}.weight"
            for n, b in enumerate(self.blocks)
            for name in b.identities
        ]


def require_llama_family(config) -> None:
    """Refuse architectures whose blocks the per-block layouts cannot describe."""
    kind = getattr(config, "model_type", "?")
    if kind not in LLAMA_FAMILY:
        raise UnsupportedModelError(
            f"model type {kind!r}: heterogeneous export supports {', '.join(LLAMA_FAMILY)} "
            "(export block-pruned models of other architectures with --format hf)"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise UnsupportedModelError(f"{flag}=True is not supported by the export layouts")


def require_full_attention(config) -> None:
    """The per-block forms (the exported code's Llama attention, llama.cpp's ``deci``) give
    every block full attention: refuse a source with a sliding window."""
    if getattr(config, "use_sliding_window", False):
        raise UnsupportedModelError(
            f"{config.model_type} with use_sliding_window=True: the per-block forms give every "
            "block full attention (llama.cpp's deci graph has no sliding window); export "
            "uniform plans with --format hf"
        )


def require_plain_blocks(model: HFModel) -> None:
    """A non-Llama model is written as it is in memory: only when no block holds a stand-in
    (a removed sublayer or a fine-pruned identity)."""
    for name, module in model.named_modules():
        if isinstance(module, ZeroBranch):
            raise UnsupportedModelError(
                f"{name} was removed inside its block; a {model.config.model_type} export "
                "supports block and width plans (hf-hetero and deci GGUF are Llama-family only)"
            )


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _fail(block: int, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"block {block}: {what}; no export format can express it")


def _removed(module: HFModel, block: int, name: str) -> bool:
    """True for a removed branch (zeros); refuses other stand-ins."""
    if isinstance(module, PatchBranch) and module.fill != "zero":
        raise _fail(block, f"{name} is a '{module.fill}' stand-in")
    return isinstance(module, ZeroBranch)


def _attention(layer: HFModel, block: int, head_dim: int) -> tuple[int, int]:
    attn = layer.self_attn
    if _removed(attn, block, "self_attn"):
        return 0, 0
    if isinstance(layer.input_layernorm, nn.Identity):
        raise _fail(block, "attention without its input norm")
    for name in ATTN_LINEARS:
        if not isinstance(getattr(attn, name, None), nn.Linear):
            raise _fail(block, f"self_attn.{name} is {type(getattr(attn, name, None)).__name__}")
    return attn.q_proj.out_features // head_dim, attn.k_proj.out_features // head_dim


def _mlp(layer: HFModel, block: int, hidden: int) -> tuple[int, tuple[str, ...]]:
    mlp = layer.mlp
    if _removed(mlp, block, "mlp"):
        return 0, ()
    if isinstance(layer.post_attention_layernorm, nn.Identity):
        raise _fail(block, "an MLP without its input norm")
    if isinstance(getattr(mlp, "act_fn", None), nn.Identity):
        raise _fail(block, "an MLP whose activation was removed")
    identities = []
    for name in MLP_LINEARS:
        module = getattr(mlp, name)
        if isinstance(module, nn.Identity):
            identities.append(name)
        elif not isinstance(module, nn.Linear):
            raise _fail(block, f"mlp.{name} is {type(module).__name__}")
    width = hidden if identities else mlp.gate_proj.out_features
    return width, tuple(identities)


def block_specs(model: HFModel) -> list[BlockSpec]:
    """Per block of the pruned model: heads, KV heads, FFN width (all blocks, empty included)."""
    config = model.config
    require_llama_family(config)
    head_dim = head_dim_of(config)
    specs = []
    for i, layer in enumerate(model.model.layers):
        heads, kv = _attention(layer, i, head_dim)
        ffn, identities = _mlp(layer, i, config.hidden_size)
        specs.append(BlockSpec(i, heads, kv, ffn, identities))
    return specs


def _block_state(layer: HFModel, spec: BlockSpec, prefix: str, like: torch.Tensor) -> dict:
    out = {}
    if spec.heads:
        out[f"{prefix}.input_layernorm.weight"] = layer.input_layernorm.weight
        for name in ATTN_LINEARS:
            linear = getattr(layer.self_attn, name)
            out[f"{prefix}.self_attn.{name}.weight"] = linear.weight
            if linear.bias is not None:
                out[f"{prefix}.self_attn.{name}.bias"] = linear.bias
    if spec.ffn:
        out[f"{prefix}.post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight
        for name in MLP_LINEARS:
            out[f"{prefix}.mlp.{name}.weight"] = (
                torch.eye(spec.ffn, dtype=like.dtype, device=like.device)
                if name in spec.identities
                else getattr(layer.mlp, name).weight
            )
    return out


def model_layout(model: HFModel) -> Layout:
    """The exported blocks and the standard-named state dict of a pruned Llama-family model."""
    specs = [s for s in block_specs(model) if not s.empty]
    if not specs:
        raise UnsupportedModelError("every block was removed; nothing to export")
    inner = model.model
    like = inner.embed_tokens.weight
    state = {"model.embed_tokens.weight": like, "model.norm.weight": inner.norm.weight}
    if not model.config.tie_word_embeddings:
        state["lm_head.weight"] = model.lm_head.weight
    for n, spec in enumerate(specs):
        state |= _block_state(inner.layers[spec.source], spec, f"model.layers.{n}", like)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    return Layout(specs, head_dim_of(model.config), state)


def cut_per_layer_lists(model: HFModel, layout: Layout) -> dict:
    """The source config's per-layer lists (``layer_types``, …) cut to the exported blocks."""
    config = model.config.to_dict()
    keys = per_layer_keys(model.config, len(model.model.layers))
    return {key: [config[key][b.source] for b in layout.blocks] for key in keys}
