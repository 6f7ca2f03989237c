"""4-bit AWQ / GPTQ after pruning, executed by llm-compressor's ``oneshot``.

AWQ and GPTQ quantize each Linear's input dimension in groups of ``group_size`` (128 by
default): a pruned width that is not a multiple fails or falls back to slow kernels. depthcut
checks every Linear first and names the ``--round-to`` that fixes it. llm-compressor 0.14 pins
transformers <= 5.17 (older than depthcut's), so it runs in its own environment
(``make llmcompressor`` creates ``.venv-llmcompressor`` beside ``.venv``; or
``DEPTHCUT_LLMCOMPRESSOR_PYTHON`` names its interpreter) on the run exported as a Hugging Face
checkpoint, through ``depthcut/int4_worker.py``; the 4-bit model is saved in compressed-tensors
format and reloaded there to measure its perplexity on the CPU (GPUs run the same recipe).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from depthcut.errors import DepthcutError

PYTHON_VARIABLE = "DEPTHCUT_LLMCOMPRESSOR_PYTHON"
WORKER = Path(__file__).with_name("int4_worker.py")


class AlignmentError(DepthcutError):
    """Some Linear input width is not a multiple of the quantization group size."""


def linear_widths(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> dict[str, int]:
    """{module path: in_features} of every nn.Linear not skipped (by path suffix)."""
    return {
        name: m.in_features
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not any(name.endswith(s) for s in skip)
    }


def misaligned(model: nn.Module, group_size: int) -> dict[str, int]:
    """The Linear layers whose ``in_features % group_size != 0``."""
    if group_size < 1:
        raise DepthcutError(f"group size {group_size} must be >= 1")
    return {k: w for k, w in linear_widths(model).items() if w % group_size}


def check_alignment(model: nn.Module, group_size: int) -> None:
    """Raise with the offending layers and the fix (prune with ``--round-to``)."""
    bad = misaligned(model, group_size)
    if bad:
        shown = ", ".join(f"{k} (in {w})" for k, w in list(bad.items())[:4])
        raise AlignmentError(
            f"{len(bad)} Linear layers have input widths not divisible by group size "
            f"{group_size}: {shown}{' …' if len(bad) > 4 else ''}. Prune again with "
            f"--round-to {group_size} (kept MLP widths) and whole heads whose total width "
            f"is a multiple of {group_size}, or use a smaller --group-size"
        )


def llmcompressor_python() -> Path:
    """The interpreter of llm-compressor's environment; a one-line fix when it is missing."""
    given = os.environ.get(PYTHON_VARIABLE)
    path = Path(given) if given else Path(sys.prefix).parent / ".venv-llmcompressor/bin/python"
    if not path.exists():
        raise DepthcutError(
            f"AWQ / GPTQ run in llm-compressor's own environment ({path} not found): create it "
            f"with 'make llmcompressor', or set {PYTHON_VARIABLE} to its python"
        )
    return path


def run_worker(
    python: Path,
    model_dir: Path,
    inputs: dict,
    out: Path,
    method: str,
    group_size: int,
    ignore: tuple[str, ...],
) -> dict:
    """Quantize the checkpoint ``model_dir`` in llm-compressor's environment into ``out``;
    its ``int4_result.json`` (float and 4-bit held-out NLL, seconds, bytes)."""
    file = out.parent / f".{out.name}-inputs.pt"
    torch.save(inputs, file)
    try:
        # -P: the worker's folder (depthcut's, whose io.py and inspect.py would shadow the
        # standard library) is not put on sys.path
        args = [str(python), "-P", str(WORKER), str(model_dir), str(file), str(out), method]
        done = subprocess.run(
            [*args, str(group_size), ",".join(ignore)], capture_output=True, text=True
        )
    finally:
        file.unlink(missing_ok=True)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise DepthcutError(f"llm-compressor {method} failed (exit {done.returncode}): {tail}")
    return json.loads((out / "int4_result.json").read_text())
