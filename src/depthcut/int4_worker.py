"""4-bit AWQ / GPTQ of a Hugging Face checkpoint with llm-compressor's ``oneshot``, run in
llm-compressor's own environment (it pins transformers <= 5.17, older than depthcut's): this
file imports nothing from depthcut. depthcut writes the checkpoint and an inputs file
(calibration windows, evaluation windows), runs

    PYTHON int4_worker.py MODEL_DIR INPUTS.pt OUT_DIR awq|gptq GROUP_SIZE IGNORE[,IGNORE…]

and reads OUT_DIR: the model in compressed-tensors format (W4A16, symmetric int4 weights in
groups of GROUP_SIZE, packed), its tokenizer, and ``int4_result.json`` — held-out summed NLL
of the float checkpoint and of the reloaded 4-bit one (the arithmetic of
``depthcut.eval.perplexity.logits_nll``), seconds, bytes on disk.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROWS = 256


def summed_nll(model, windows: list[torch.Tensor], targets: list[int]) -> float:
    """Summed NLL of the last ``n`` tokens of each window, in float64 a slice at a time."""
    total = 0.0
    with torch.no_grad():
        for chunk, n in zip(windows, targets):
            logits = model(input_ids=chunk.unsqueeze(0), use_cache=False).logits[0]
            logits, wanted = logits[:-1][-n:], chunk[1:][-n:]
            for rows in range(0, n, ROWS):
                logp = torch.log_softmax(logits[rows : rows + ROWS].double(), dim=-1)
                total -= float(logp.gather(-1, wanted[rows : rows + ROWS, None]).sum())
    return total


def recipe(method: str, group_size: int, ignore: list[str]):
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import GPTQModifier

    weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group"}
    groups = {"group_0": {"targets": ["Linear"], "weights": weights | {"group_size": group_size}}}
    modifier = {"awq": AWQModifier, "gptq": GPTQModifier}[method]
    return modifier(config_groups=groups, ignore=ignore)


def cpu_without_pinning() -> None:
    """llm-compressor 0.14's AWQ pins cached activations for faster host-to-GPU copies,
    unconditionally; on a machine without an accelerator pinning fails. Pinning only speeds up
    copies to a GPU, so it is skipped there."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.cuda.is_available():
        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None


def main(model_dir: str, inputs: str, out: str, method: str, group_size: str, ignore: str):
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    data = torch.load(inputs)
    load = {"dtype": torch.float32, "trust_remote_code": True}
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, **load)
    model.eval()
    float_nll = summed_nll(model, data["windows"], data["targets"])
    calib = data["calibration"]
    dataset = Dataset.from_dict(
        {"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()}
    )
    cpu_without_pinning()
    began = time.perf_counter()
    oneshot(
        model=model,
        dataset=dataset,
        recipe=recipe(method, int(group_size), ignore.split(",")),
        max_seq_length=calib.shape[1],
        num_calibration_samples=len(calib),
        trust_remote_code_model=True,  # hf-hetero exports (per-layer widths) carry their code
    )
    seconds = time.perf_counter() - began
    model.to(torch.float16)  # what is not 4-bit (embeddings, norms, LM head, scales) in 16 bit
    model.save_pretrained(out, save_compressed=True)
    AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True).save_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out, **load).eval()
    result = {
        "method": method,
        "group_size": int(group_size),
        "float_nll": float_nll,
        "quantized_nll": summed_nll(reloaded, data["windows"], data["targets"]),
        "count": int(sum(data["targets"])),
        "oneshot_seconds": seconds,
        "bytes": sum(p.stat().st_size for p in Path(out).glob("*.safetensors")),
    }
    (Path(out) / "int4_result.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:7])
