# Written by depthcut (https://pypi.org/project/depthcut/) next to a heterogeneous pruned
# checkpoint; self-contained: it needs torch and transformers only, not depthcut.
"""A Llama whose blocks differ: per block its own query / KV heads and FFN width, and blocks
without attention or without MLP (Nemotron-NAS ``block_configs`` form, which vLLM's
``DeciLMForCausalLM`` and llama.cpp's converter also read).

``config.block_configs[i]``: ``{"attention": {"no_op": bool, "num_heads": int,
"num_key_value_heads": int, "n_heads_in_group": int | None, "replace_with_linear": false},
"ffn": {"no_op": bool, "intermediate_size": int, "ffn_mult": float | None,
"replace_with_linear": false}}``. The KV cache holds slots for blocks with attention only.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import GenerationMixin, LlamaConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)


class BlockConfig(dict):
    """A ``block_configs`` entry read as ``b["ffn"]["no_op"]`` or ``b.ffn.no_op`` (vLLM reads
    attributes; a missing key is a missing attribute, so ``hasattr(b.ffn, "ffn_mult")`` is
    False where only the exact ``intermediate_size`` is given)."""

    def __getattr__(self, name):
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return BlockConfig(value) if isinstance(value, dict) else value


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.block_configs = [BlockConfig(b) for b in getattr(self, "block_configs", None) or []]


def _block_config(config: DeciLMConfig, index: int) -> DeciLMConfig:
    """A plain copy of ``config`` with this block's head counts and FFN width."""
    block = config.block_configs[index]
    local = copy.copy(config)
    local.num_attention_heads = block["attention"]["num_heads"] or config.num_attention_heads
    local.num_key_value_heads = (
        block["attention"]["num_key_value_heads"] or config.num_key_value_heads
    )
    local.intermediate_size = block["ffn"]["intermediate_size"] or config.intermediate_size
    local.head_dim = config.head_dim
    return local


class DeciLMDecoderLayer(nn.Module):
    """x + attention(norm(x)) if the block has attention; then + mlp(norm(x)) if it has one."""

    def __init__(self, config: DeciLMConfig, index: int, cache_index: int | None):
        super().__init__()
        block = config.block_configs[index]
        local = _block_config(config, index)
        self.has_attention = not block["attention"]["no_op"]
        self.has_mlp = not block["ffn"]["no_op"]
        if self.has_attention:
            if cache_index is None:
                raise ValueError(f"block {index} has attention but no KV-cache slot")
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.self_attn = LlamaAttention(local, layer_idx=cache_index)
        if self.has_mlp:
            self.post_attention_layernorm = LlamaRMSNorm(
                config.hidden_size, eps=config.rms_norm_eps
            )
            self.mlp = LlamaMLP(local)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values, **kw):
        if self.has_attention:
            attn, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                **kw,
            )
            hidden_states = hidden_states + attn
        if self.has_mlp:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class DeciLMPreTrainedModel(PreTrainedModel):
    config_class = DeciLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["DeciLMDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True


class DeciLMModel(DeciLMPreTrainedModel):
    def __init__(self, config: DeciLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        layers, slot = [], 0
        for index, block in enumerate(config.block_configs):
            has_attention = not block["attention"]["no_op"]
            layers.append(DeciLMDecoderLayer(config, index, slot if has_attention else None))
            slot += int(has_attention)
        self.attention_blocks = slot
        self.layers = nn.ModuleList(layers)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        if position_ids is None:
            seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
            position_ids = (position_ids + seen).unsqueeze(0)
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        hidden = inputs_embeds
        position_embeddings = self.rotary_emb(hidden, position_ids=position_ids)
        for layer in self.layers:
            hidden = layer(hidden, position_embeddings, mask, past_key_values, **kwargs)
        return BaseModelOutputWithPast(
            last_hidden_state=self.norm(hidden), past_key_values=past_key_values
        )


class DeciLMForCausalLM(DeciLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DeciLMConfig):
        super().__init__(config)
        self.model = DeciLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)
