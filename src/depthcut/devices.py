"""Where a model runs and in which precision: ``--device`` and ``--dtype`` for every verb.

``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the first GPU when there is one).
``--dtype``: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (the checkpoint's dtype on a GPU,
float32 on the CPU, where half-precision matmuls are slow and lose accuracy). Scores and
distances accumulate in float32 or float64 whatever the weights' dtype
(``importance.functional``).
"""

from __future__ import annotations

from typing import Any

from depthcut.errors import ConfigError

DEVICES = ("cpu", "cuda", "cuda:N", "auto")
DTYPES = ("float32", "bfloat16", "float16", "auto")


def resolve_device(spec: str = "cpu"):
    """The torch device ``spec`` names; a GPU that is not there is a one-line error."""
    import torch

    spec = (spec or "cpu").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    head, _, index = spec.partition(":")
    if head != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"--device {spec!r} unknown; use one of {', '.join(DEVICES)}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"--device {spec}: no CUDA device on this machine; use --device cpu")
    if index and int(index) >= count:
        raise ConfigError(f"--device {spec}: this machine has {count} CUDA device(s)")
    return torch.device(spec)


def resolve_dtype(spec: str | None, device, checkpoint: Any = None):
    """The torch dtype for ``spec`` on ``device``; ``checkpoint``: the config's dtype."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec not in DTYPES:
        raise ConfigError(f"--dtype {spec!r} unknown; use one of {', '.join(DTYPES)}")
    if spec != "auto":
        return getattr(torch, spec)
    if getattr(device, "type", "cpu") == "cpu":
        return torch.float32
    found = getattr(torch, str(checkpoint).removeprefix("torch."), None) if checkpoint else None
    return found if isinstance(found, torch.dtype) and found.is_floating_point else torch.float32


def device_of(model) -> Any:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    import torch

    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def on_device(batch: dict, device) -> dict:
    """``batch`` with its tensors moved to ``device`` (a no-op when they are there)."""
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def parse_max_memory(text: str | None) -> dict | None:
    """``"0=20GiB,cpu=60GiB"`` → ``{0: "20GiB", "cpu": "60GiB"}`` (accelerate's form)."""
    if not text:
        return None
    from accelerate.utils import convert_file_size_to_int

    out: dict = {}
    for part in text.split(","):
        where, _, size = part.strip().partition("=")
        try:
            convert_file_size_to_int(size)
            known = where.isdigit() or where in ("cpu", "disk")
        except (ValueError, TypeError):
            known = False
        if not known:
            raise ConfigError(
                f"--max-memory {text!r}: give DEVICE=SIZE pairs, e.g. 0=20GiB,cpu=60GiB"
            )
        out[int(where) if where.isdigit() else where] = size
    return out


def memory_bytes(max_memory: dict) -> int:
    """Bytes the map allows in memory (GPUs and CPU; disk does not count)."""
    from accelerate.utils import convert_file_size_to_int

    return sum(convert_file_size_to_int(v) for k, v in max_memory.items() if k != "disk")
