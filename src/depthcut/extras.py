"""Optional parts of depthcut and the extra that installs each (``pip install 'depthcut[X]'``).

The core (score → plan → apply → save, perplexity, latency, reports) needs only torch,
transformers, safetensors, accelerate, gguf, numpy, tqdm and matplotlib; these are imported
only where they are used, and a missing one is a one-line error naming its extra.
"""

from __future__ import annotations

import importlib.util

from depthcut.errors import ConfigError

EXTRAS = {
    "lm_eval": ("tasks", "zero-shot tasks (--tasks)"),
    "peft": ("recover", "LoRA recovery"),
    "h5py": ("vision", "the packaged CIFAR-10 CNN"),
    "torchao": ("torchao", "torchao_int8_weight_only"),
    "llama_cpp": ("llama", "--runtime llamacpp"),
}


def require(module: str) -> None:
    """Raise a one-line ConfigError when the optional ``module`` is not installed."""
    if importlib.util.find_spec(module) is None:
        extra, feature = EXTRAS[module]
        raise ConfigError(
            f"{feature} needs {module}, an optional extra: pip install 'depthcut[{extra}]'"
        )
