"""4-bit AWQ/GPTQ after pruning: the GPU path, prepared and checked on the CPU.

AWQ and GPTQ quantize each Linear's input dimension in groups of ``group_size`` (128 by
default): a pruned width that is not a multiple fails or falls back to slow kernels. depthcut
checks every Linear here, suggests the ``--round-to`` that fixes it, and writes an
llm-compressor recipe (``int4_recipe.yaml``) to run with ``oneshot`` on a GPU machine.
"""

from __future__ import annotations

from torch import nn

from depthcut.errors import DepthcutError

INT4_METHODS = ("gptq", "awq")
MODIFIER = {"gptq": "GPTQModifier", "awq": "AWQModifier"}


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


def recipe_yaml(method: str, group_size: int, ignore: tuple[str, ...] = ("lm_head",)) -> str:
    """An llm-compressor recipe: 4-bit symmetric weights in groups, activations in 16 bit."""
    if method not in INT4_METHODS:
        raise DepthcutError(f"int4 method {method!r}; choose one of {INT4_METHODS}")
    ignored = ", ".join(f'"{name}"' for name in ignore)
    return (
        "quant_stage:\n"
        "  quant_modifiers:\n"
        f"    {MODIFIER[method]}:\n"
        f"      ignore: [{ignored}]\n"
        "      config_groups:\n"
        "        group_0:\n"
        '          targets: ["Linear"]\n'
        "          weights: {num_bits: 4, type: int, symmetric: true, strategy: group, "
        f"group_size: {group_size}}}\n"
    )


GPU_STEPS = """# 4-bit {method} of this pruned model (GPU)

Widths checked on the CPU: every Linear input width is a multiple of {group_size}.
On a machine with a GPU and `llmcompressor` installed:

```python
from llmcompressor import oneshot
oneshot(model="{model_dir}", recipe="int4_recipe.yaml", dataset="<calibration text>",
        output_dir="{model_dir}-w4a16", max_seq_length=512, num_calibration_samples=256)
```
Load heterogeneous (per-layer width) models with `depthcut.load` first and pass the model
object instead of the path; whole-block and uniform-width plans load with `from_pretrained`.
"""
