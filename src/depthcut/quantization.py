"""Quantization after pruning: the last step of layers → heads → recovery → quantize.

Measured on this 2-core AVX2 CPU (``benchmarks/bench_quantize.py``): only PyTorch's dynamic
int8 ``Linear`` (int8 weights, activations quantized per batch) makes a Llama faster; torchao's
int8 weight-only shrinks memory but decodes slower. So ``dynamic_int8`` is the default and the
only method saved to disk (int8 weights + per-channel scales in ``quantized.safetensors``);
``torchao_int8_weight_only`` is offered for measurement. 4-bit AWQ / GPTQ are executed by
llm-compressor in its own environment (``depthcut.int4``).
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from depthcut.config import INT8_METHODS, Int8Method
from depthcut.errors import ConfigError, DepthcutError
from depthcut.hftypes import HFModel

METHODS = INT8_METHODS
SAVED_METHODS = ("dynamic_int8",)
ORDER_HINT = "prune (and recover) first, quantize last: layers → heads → recovery → quantize"


class QuantizedInputError(DepthcutError):
    """Pruning was asked of a model that is already quantized."""


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize: ``method`` (one of METHODS); ``skip`` names modules left in fp32
    (e.g. ``lm_head``) by path suffix; ``keep_mlp_out`` leaves the MLP output projections
    (found from the traced blocks) in fp32: their inputs carry activation outliers that
    per-tensor dynamic int8 cannot represent (SmolLM2-135M perplexity 11.9 → 28.7 with them
    quantized, 13.8 without)."""

    method: Int8Method = "dynamic_int8"
    skip: tuple[str, ...] = ()
    keep_mlp_out: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"quantize method {self.method!r}; choose one of {METHODS}")

    def to_dict(self) -> dict:
        """The config as JSON-ready data (saved in ``depthcut.json``)."""
        return asdict(self)


def quiet_torchao() -> None:
    """torchao (also imported by peft) logs failed optional CUDA kernels on CPU machines."""
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _is_subclass_tensor(t: torch.Tensor) -> bool:
    """A tensor subclass (e.g. torchao's quantized weights), not a plain tensor/parameter."""
    return type(t) not in (torch.Tensor, nn.Parameter)


def _dynamic_linear_type():
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear


def is_quantized(model: nn.Module) -> bool:
    """True when any module or weight of ``model`` is quantized (torch.ao, torchao, or a
    Hugging Face ``quantization_config``)."""
    if getattr(getattr(model, "config", None), "quantization_config", None):
        return True
    dynamic = _dynamic_linear_type()
    for module in model.modules():
        if isinstance(module, dynamic):
            return True
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and _is_subclass_tensor(weight):
            return True
        if isinstance(weight, torch.Tensor) and not weight.is_floating_point():
            return True
    return False


def refuse_quantized(model: nn.Module, what: str = "prune") -> None:
    """Quantize-then-prune is refused: importance and surgery need the float weights."""
    if is_quantized(model):
        raise QuantizedInputError(f"cannot {what} a quantized model; {ORDER_HINT}")


def _targets(model: nn.Module, cfg: QuantizeConfig) -> set[str]:
    keep = mlp_output_paths(model) if cfg.keep_mlp_out else set()
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name not in keep
        and not any(name.endswith(s) for s in cfg.skip)
    }


def mlp_output_paths(model: nn.Module) -> set[str]:
    """The transforms that consume the MLP width (down projections), from the traced blocks."""
    from depthcut.graph.structure import discover_structure
    from depthcut.methods.width.layers import width_layers

    try:
        layers = width_layers(model, discover_structure(model), "neuron")
    except DepthcutError:
        return set()
    return {part.path for w in layers for part in w.parts if part.side == "in"}


def quantize(model: nn.Module, cfg: QuantizeConfig = QuantizeConfig()) -> nn.Module:
    """A quantized copy of ``model`` (the input stays float).

    >>> qmodel = quantize(pruned, QuantizeConfig("dynamic_int8"))  # doctest: +SKIP
    """
    refuse_quantized(model, "quantize")
    model = copy.deepcopy(model).eval()
    untie_lm_head(model)
    targets = _targets(model, cfg)
    if not targets:
        raise DepthcutError("no nn.Linear layers to quantize")
    if cfg.method == "dynamic_int8":
        return _quantize_dynamic(model, targets)
    return _quantize_torchao(model, targets)


def _quantize_dynamic(model: nn.Module, targets: set[str]) -> nn.Module:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = {name: per_channel_dynamic_qconfig for name in targets}
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


def _quantize_torchao(model: nn.Module, targets: set[str]) -> nn.Module:
    from depthcut.extras import require

    require("torchao")
    quiet_torchao()
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda _m, name: name in targets)
    return model


def untie_lm_head(model: HFModel) -> None:
    """Give a tied output projection its own weight so quantizing it leaves the embedding."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and isinstance(out, nn.Linear):
        out.weight = nn.Parameter(out.weight.detach().clone())
        if hasattr(model, "config"):
            model.config.tie_word_embeddings = False


def quantized_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain tensors for safetensors: int8 weights with per-channel scales and zero points
    for every dynamic int8 Linear, and the float state of everything else."""
    dynamic = _dynamic_linear_type()
    state: dict[str, torch.Tensor] = {}
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, dynamic)}
    for name, module in quantized.items():
        weight, bias = module._weight_bias()
        state[f"{name}.qweight"] = weight.int_repr().contiguous()
        state[f"{name}.qscale"] = weight.q_per_channel_scales().to(torch.float64)
        state[f"{name}.qzero"] = weight.q_per_channel_zero_points()
        if bias is not None:
            state[f"{name}.bias"] = bias.detach().clone()
    for key, tensor in model.state_dict().items():
        if any(key.startswith(f"{n}.") for n in quantized):
            continue
        if _is_subclass_tensor(tensor):
            raise DepthcutError(f"{key} is a {type(tensor).__name__}: only {SAVED_METHODS} saves")
        state[key] = tensor.detach().clone().contiguous()
    return _dedupe_shared(state)


def _dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory: give each key its own copy."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        ptr = tensor.data_ptr()
        out[key] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out


def load_quantized_state(model: nn.Module, cfg: QuantizeConfig, state: dict) -> nn.Module:
    """Fill a float ``model`` of the right shapes (built for this load; changed in place) from
    ``state``, quantize it, then put the stored int8 weights into its quantized modules (so
    the result is bit-identical)."""
    rest = dict(state)
    qnames = [k.removesuffix(".qweight") for k in state if k.endswith(".qweight")]
    stored = {n: [rest.pop(f"{n}.{k}") for k in ("qweight", "qscale", "qzero")] for n in qnames}
    biases = {n: rest.pop(f"{n}.bias", None) for n in qnames}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    unfilled = [k for k in missing if k.rsplit(".", 1)[0] not in stored]
    if unexpected or unfilled:
        raise DepthcutError(f"quantized weights do not fit: {unexpected[:3] or unfilled[:3]}")
    if cfg.method not in SAVED_METHODS:
        raise DepthcutError(f"{cfg.method} models are not saved; only {SAVED_METHODS}")
    untie_lm_head(model)  # ``model`` was built for this load: quantize it in place
    qmodel = _quantize_dynamic(model.eval(), set(qnames))  # exactly the modules saved
    for name, (ints, scales, zeros) in stored.items():
        weight = torch._make_per_channel_quantized_tensor(ints, scales, zeros, 0)
        packed: Any = qmodel.get_submodule(name)  # a dynamic-int8 Linear
        packed.set_weight_bias(weight, biases[name])
    return qmodel


def _tensor_bytes(t: torch.Tensor) -> int:
    if _is_subclass_tensor(t) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def size_mb(model: nn.Module) -> float:
    """Bytes held by parameters, buffers and packed int8 weights, in MB (shared counted once)."""
    tensors = list(model.state_dict(keep_vars=True).values())
    for module in model.modules():
        if isinstance(module, _dynamic_linear_type()):
            tensors.extend(t for t in module._weight_bias() if t is not None)
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += _tensor_bytes(t)
    return total / 1e6
