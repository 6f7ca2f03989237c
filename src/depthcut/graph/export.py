"""Capture a module (a whole CNN, or one repeated Transformer block) with ``torch.export``.

``torch.export`` traces HF Llama/BERT blocks under transformers 5.x where plain ``torch.fx``
fails; every ATen node keeps ``meta["nn_module_stack"]``, the module calls it ran inside, which
is how depthcut maps the graph back to the modules it edits. The real call arguments of a
block are recorded with a forward pre-hook during one probe forward of the whole model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from depthcut.errors import UnsupportedModelError


def record_call(model: nn.Module, target: nn.Module, run: Callable[[], Any]) -> tuple[tuple, dict]:
    """(args, kwargs) of the first call of ``target`` while ``run()`` drives ``model``."""
    seen: dict[str, Any] = {}

    def hook(module, args, kwargs):
        if "args" not in seen:
            seen["args"], seen["kwargs"] = args, dict(kwargs)

    handle = target.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    if "args" not in seen:
        raise UnsupportedModelError(f"{type(target).__name__} was not called by the probe")
    return seen["args"], seen["kwargs"]


def output_arities(root: nn.Module, args: tuple, kwargs: dict) -> dict[str, int | None]:
    """Per submodule path: None when it returns a tensor, n for a tuple/list of n items."""
    names = {id(m): n for n, m in root.named_modules()}
    arity: dict[str, int | None] = {}

    def hook(module, _args, output):
        if isinstance(output, (tuple, list)):
            arity.setdefault(names[id(module)], len(output))
        else:
            arity.setdefault(names[id(module)], None)

    handles = [m.register_forward_hook(hook) for m in root.modules()]
    try:
        with torch.no_grad():
            root(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return arity


def export_module(root: nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    """``torch.export`` of ``root`` in eval mode on real arguments (non-strict)."""
    was_training = root.training
    root.eval()
    kwargs = {k: v for k, v in kwargs.items() if v is not None and not isinstance(v, bool)}
    try:
        with torch.no_grad():
            return torch.export.export(root, tuple(args), kwargs, strict=False)
    except Exception as err:  # noqa: BLE001 - torch.export raises many types
        raise UnsupportedModelError(
            f"{type(root).__name__}: torch.export could not trace it ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]})"
        ) from err
    finally:
        root.train(was_training)
