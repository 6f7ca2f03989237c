"""Runtime capture of a model's module-call graph on a probe input.

Every module call is recorded with its place in the call tree, the identity of its main input
and output tensors (data flow between calls) and the torch ops run inside it (through a
``TorchFunctionMode``). This is enough to find repeated blocks, the residual sublayers inside
them (attention = the call that runs softmax / scaled-dot-product attention), the norms that
feed or follow a sublayer, and the model's tail after the block stack, without any
architecture-specific names. Every hook is removed in ``finally``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from depthcut.ops import ATTENTION_OPS, NORM_OPS, TRANSFORM_OPS

WATCHED_OPS = ATTENTION_OPS | NORM_OPS | TRANSFORM_OPS


@dataclass
class Call:
    """One module call seen while running the probe input."""

    path: str
    parent: str | None
    start: int
    end: int = -1
    in_id: tuple | None = None  # (data_ptr, shape) of the main input: views of it match
    out_id: tuple | None = None
    out_arity: int | None = None  # None: a tensor; n: a tuple/list of n items
    ops: set[str] = field(default_factory=set)
    views: list[tuple[int, ...]] = field(default_factory=list)  # see view_channels


def view_channels(view: torch.Tensor, base: torch.Tensor) -> tuple[int, ...] | None:
    """The channels (last-dim indices) of contiguous ``base`` that a view of it holds, in the
    view's own order, or None when it is not a per-row channel selection.

    Dimensions whose stride is a multiple of the row width are positions (batch, sequence);
    the others walk channels: ``qkv[..., :q]``, ``.split``/``.chunk`` on the last dim,
    ``.view(b, s, heads, 3 * d).chunk(3, -1)`` (per-head interleaving) and ``x[..., ::2]``
    are all read the same way."""
    if base.dim() == 0 or not base.is_contiguous() or view.dtype != base.dtype:
        return None
    width = int(base.shape[-1])
    start = view.storage_offset() - base.storage_offset()
    if start < 0 or start >= base.numel():
        return None
    channels = [start % width]
    for size, stride in zip(view.shape, view.stride()):
        if size > 1 and stride % width:
            channels = [c + i * stride for c in channels for i in range(size)]
    if channels[-1] >= width or min(channels) < 0:
        return None
    return tuple(int(c) for c in channels)


def whole_runs(view: tuple[int, ...], run: int) -> bool:
    """Every ``run`` consecutive channels of the view are one contiguous ascending range."""
    if len(view) % run:
        return False
    return all(view[i + run - 1] - view[i] == run - 1 for i in range(0, len(view), run))


def channel_segments(
    views: list[tuple[int, ...]], width: int, run: int = 1
) -> list[tuple[int, ...]] | None:
    """How a transform's ``width`` output channels are split among its readers: the maximal
    proper channel sets its views select (ordered by first channel), one segment when no view
    selects a part, None when the views do not partition the channels. Only views made of
    whole ``run``-channel ranges count (``run`` = the head size: RoPE's half-head slices are
    not a q / k / v split)."""
    sets: dict[frozenset, tuple[int, ...]] = {}
    for view in views:
        if len(view) < width and whole_runs(view, run):
            sets.setdefault(frozenset(view), view)
    maximal = [order for key, order in sets.items() if not any(key < other for other in sets)]
    if not maximal:
        return [tuple(range(width))]
    if sorted(c for seg in maximal for c in seg) != list(range(width)):
        return None
    return sorted(maximal, key=min)


def first_tensor(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The main tensor input of a call: first positional tensor, else ``hidden_states``."""
    for value in args:
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


def tensor_key(tensor: torch.Tensor) -> tuple:
    """Identity of a tensor's data: a full-size view of a tensor has the same key."""
    return (tensor.data_ptr(), tuple(tensor.shape))


def output_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden state a block or layer returned (alone or first of a tuple); an error when
    it returned none."""
    out = output_tensor(output)
    if out is None:
        raise TypeError(f"expected a tensor output (alone or first), got {type(output).__name__}")
    return out


class _OpRecorder(TorchFunctionMode):
    def __init__(self, on_op: Callable[[str], None], on_result: Callable[[Any], None]):
        super().__init__()
        self.on_op = on_op
        self.on_result = on_result

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in WATCHED_OPS:
            self.on_op(name)
        result = func(*args, **(kwargs or {}))
        self.on_result(result)
        return result


class _Tracer:
    def __init__(self, model: nn.Module):
        self.names = {id(m): n for n, m in model.named_modules()}
        self.calls: list[Call] = []
        self.stack: list[Call] = []
        self.keep: list[torch.Tensor] = []  # keeps data pointers unique while tracing
        self.clock = 0
        self.outputs: dict[int, list[tuple[Call, torch.Tensor]]] = {}  # storage → producers

    def pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        parent = self.stack[-1].path if self.stack else None
        call = Call(self.names[id(module)], parent, self.clock)
        self.clock += 1
        tensor = first_tensor(args, kwargs)
        if tensor is not None:
            call.in_id = tensor_key(tensor)
            self.keep.append(tensor)
        self.calls.append(call)
        self.stack.append(call)

    def post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        call = self.stack.pop()
        call.end = self.clock
        self.clock += 1
        tensor = output_tensor(output)
        if tensor is not None:
            call.out_id = tensor_key(tensor)
            self.keep.append(tensor)
            storage = tensor.untyped_storage().data_ptr()
            self.outputs.setdefault(storage, []).append((call, tensor))
        if isinstance(output, (tuple, list)):
            call.out_arity = len(output)

    def op(self, name: str) -> None:
        for call in self.stack:
            call.ops.add(name)

    def result(self, value: Any) -> None:
        """Record which channels of a module output a view of it selects."""
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if not isinstance(item, torch.Tensor) or item.device.type == "meta":
                continue
            for call, base in self.outputs.get(item.untyped_storage().data_ptr(), ()):
                channels = view_channels(item, base)
                if channels is not None and len(channels) < base.shape[-1]:
                    call.views.append(channels)


def trace_calls(model: nn.Module, run: Callable[[], Any]) -> list[Call]:
    """Run ``run()`` (which calls ``model``) and return every module call in start order."""
    tracer = _Tracer(model)
    handles = []
    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(tracer.pre, with_kwargs=True))
            handles.append(module.register_forward_hook(tracer.post, with_kwargs=True))
        with torch.no_grad(), _OpRecorder(tracer.op, tracer.result):
            run()
    finally:
        for handle in handles:
            handle.remove()
    return tracer.calls
