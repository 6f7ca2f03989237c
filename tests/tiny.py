"""Tiny random models built in code (no downloads): Llama with GQA, GPT-2, GPT-NeoX."""

from __future__ import annotations

import torch

VOCAB = 97


def tiny_llama(layers: int = 6, seed: int = 0, **overrides):
    """Llama with GQA 4/2; ``overrides`` replace config values (e.g. the vocabulary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    values = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(LlamaConfig(**(values | overrides))).eval()


def tiny_gpt2(layers: int = 6, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=layers,
        n_head=4,
        n_positions=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return GPT2LMHeadModel(cfg).eval()


def tiny_neox(layers: int = 6, seed: int = 0, parallel: bool = True):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=128,
        use_parallel_residual=parallel,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return GPTNeoXForCausalLM(cfg).eval()


GQA_DECODER = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}


def tiny_phi3(layers: int = 6, seed: int = 0):
    """Phi-3: fused ``qkv_proj`` (GQA: 4 q / 2 kv heads) and fused ``gate_up_proj``."""
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    cfg = Phi3Config(
        **GQA_DECODER,
        intermediate_size=48,
        num_hidden_layers=layers,
        original_max_position_embeddings=128,
    )
    return Phi3ForCausalLM(cfg).eval()


def tiny_qwen2(
    layers: int = 6, seed: int = 0, sliding: bool = True, random_bias: bool = False, **overrides
):
    """Qwen2: q/k/v biases, GQA, sliding-window attention in the upper layers (``sliding``;
    Qwen2.5's released models have it off); ``random_bias``: nonzero q/k/v biases."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    window = {"sliding_window": 4, "max_window_layers": layers // 2} if sliding else {}
    cfg = Qwen2Config(
        **(GQA_DECODER | {"intermediate_size": 64} | overrides),
        num_hidden_layers=layers,
        use_sliding_window=sliding,
        **window,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # Qwen2 initialises its biases to zero
        for name, p in model.named_parameters():
            if random_bias and name.endswith("_proj.bias"):
                p.normal_(0, 0.5)
    return model


def tiny_smol_vocab(layers: int = 6, **overrides):
    """A tiny random Llama on SmolLM2's 49,152-token vocabulary (a tokenizer the converter
    knows); FFN 160 is not a multiple of 256."""
    values = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=160,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        initializer_range=0.1,
        pad_token_id=None,
    )
    return tiny_llama(layers, **(values | overrides))


BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "neox": tiny_neox, "phi3": tiny_phi3}


def tiny_calib(n: int = 6, length: int = 20, seed: int = 1, pad_last: int = 0):
    from depthcut.data import CalibData

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=g)
    mask = torch.ones_like(ids)
    if pad_last:
        mask[-1, -pad_last:] = 0
        ids[-1, -pad_last:] = 0
    return CalibData(ids, mask, batch_size=2)


def tiny_tokenizer():
    """A word-level fast tokenizer over VOCAB ids (built offline, in code)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
    )


def words(n: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(f"w{int(i)}" for i in torch.randint(3, VOCAB, (n,), generator=g))


def save_tiny(path, builder=tiny_llama):
    model = builder()
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return model


def tiny_gemma3(layers: int = 6, seed: int = 0):
    """Gemma3 text model: sliding/full ``layer_types``, QK-norm, pre/post feed-forward norms."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        sliding_window=4,
        sliding_window_pattern=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return Gemma3ForCausalLM(cfg).eval()


def _bert_config(layers: int, **kw):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        pad_token_id=0,
        **kw,
    )


def tiny_bert(layers: int = 4, seed: int = 0):
    """BERT encoder (post-norm blocks, split intermediate/output MLP)."""
    from transformers import BertModel

    torch.manual_seed(seed)
    model = BertModel(_bert_config(layers)).eval()
    model.config.architectures = ["BertModel"]
    return model


def tiny_bert_lm(layers: int = 4, seed: int = 0):
    """BERT as a causal LM (is_decoder): post-norm blocks behind an LM head."""
    from transformers import BertLMHeadModel

    torch.manual_seed(seed)
    return BertLMHeadModel(_bert_config(layers, is_decoder=True)).eval()


def pattern_text(articles: int = 40, length: int = 200) -> str:
    """Learnable text for recovery tests: each article walks the vocabulary in steps of 7."""
    return "\n\n".join(
        " ".join(f"w{3 + (a + 7 * i) % (VOCAB - 3)}" for i in range(length))
        for a in range(articles)
    )


def named(table, names: list[str]) -> list:
    """Block i's option of an option table called ``names[i]``."""
    return [next(o for o in table.options(i) if o.name == n) for i, n in enumerate(names)]
