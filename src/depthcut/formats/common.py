"""What every export format shares: the run it reads, the weights and tokenizer it writes, the
fixed prompts it verifies on."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from depthcut.errors import DepthcutError, UnsupportedModelError
from depthcut.hftypes import HFModel

PROMPT_LEN = 24


class ExportError(DepthcutError):
    """An export could not be written or did not verify in its runtime."""


def load_run(run: str | Path):
    """(model, tokenizer) of a depthcut output; refuses quantized and patched runs."""
    from depthcut.io import load, read_meta
    from depthcut.surgery.patch import recorded_patches

    meta = read_meta(run)
    if meta.get("quantization"):
        raise UnsupportedModelError(
            f"{run}: an int8-quantized run cannot be exported; export the float run it came "
            "from (quantize the export instead, e.g. --format gguf --quant q4_k_m)"
        )
    if any(recorded_patches(p.get("run", {})) for p in meta["plans"]):
        raise UnsupportedModelError(
            f"{run}: a --repair patch run carries LinearPatch modules on the residual stream, "
            "which no export format has; export a run repaired with --repair ls or none"
        )
    model, tok = load(run)
    return model.float().eval(), tok


def write_safetensors(state: dict[str, torch.Tensor], folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))


def write_config(config: dict, folder: Path) -> None:
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


TEXTS = (
    "The history of the city begins in the twelfth century, when a small market grew up "
    "around the bridge over the river and merchants from the coast settled there.",
    "To make bread, mix flour, water, salt and yeast into a dough, knead it for ten minutes, "
    "let it rise until it has doubled in size, then shape it and bake it in a hot oven.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon "
    "dioxide to produce glucose and oxygen, and it takes place mainly in the leaves.",
)


def prompts(model: HFModel, tokenizer=None, length: int = PROMPT_LEN) -> torch.Tensor:
    """Fixed prompts: the first ``length`` tokens of three English sentences when the
    tokenizer makes that many (real text keeps activations realistic), else seeded ids."""
    vocab = model.config.vocab_size
    if tokenizer is not None:
        rows = [tokenizer(t, add_special_tokens=False)["input_ids"][:length] for t in TEXTS]
        if all(len(r) == length and max(r) < vocab for r in rows):
            return torch.tensor(rows)
    g = torch.Generator().manual_seed(1234)
    return torch.randint(min(100, vocab // 4), vocab, (len(TEXTS), length), generator=g)


@torch.no_grad()
def reference_logits(model: HFModel, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.float()


@torch.no_grad()
def greedy(model: HFModel, ids: torch.Tensor, new: int) -> torch.Tensor:
    """``new`` greedy tokens after each prompt (KV cache on)."""
    out = model.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1] :]
