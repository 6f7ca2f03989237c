"""Reference semantics of a fine-grained state by forward hooks on the *unmodified* root.

Nothing is sliced: removed channels are zeroed where they are produced, a pruned unit maps
its input's alive channels onto its output's alive channels (zeros elsewhere), removed
activations/norms pass their input, and patched modules output 0 or 1. Physical surgery
(:func:`depthcut.methods.fine.surgery.materialize`) must compute the same outputs; tests check it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from depthcut.graph.capture import first_tensor, output_tensor
from depthcut.methods.fine.patch import patches_of
from depthcut.methods.fine.state import PRUNABLE_NODES, FineState
from depthcut.units.bypass import replace_output


def _index(labels: list[int], device) -> torch.Tensor:
    return torch.tensor(labels, dtype=torch.long, device=device)


def _identity_map(state: FineState, node):
    a_root, b_root = state.in_out(node)
    a, b = state.alive_of(a_root), state.alive_of(b_root)
    dim, size = node.extra["cdim"], state.g.sizes[b_root]

    def hook(module, args, kwargs, output):
        x = first_tensor(args, kwargs)
        shape = list(x.shape)
        shape[dim] = size
        y = x.new_zeros(shape)
        y.index_copy_(dim, _index(b, x.device), x.index_select(dim, _index(a, x.device)))
        return replace_output(output, y)

    return hook


def _passthrough(module, args, kwargs, output):
    return replace_output(output, first_tensor(args, kwargs))


def _zero_removed(state: FineState, root: tuple, dim: int):
    removed = sorted(set(range(state.g.sizes[root])) - set(state.alive_of(root)))

    def hook(module, args, kwargs, output):
        y = output_tensor(output).clone()
        y.index_fill_(dim, _index(removed, y.device), 0.0)
        return replace_output(output, y)

    return hook if removed else None


def _const(fill: str):
    def hook(module, args, kwargs, output):
        y = output_tensor(output)
        return replace_output(output, torch.ones_like(y) if fill == "one" else torch.zeros_like(y))

    return hook


def _hooks(state: FineState) -> list[tuple[str, Callable]]:
    out: list[tuple[str, Callable]] = []
    gone = set(state.pruned) | state.removed
    for node in state.g.module_nodes((*PRUNABLE_NODES, "norm", "act")):
        if node.name in state.pruned and node.kind == "transform":
            out.append((node.path, _identity_map(state, node)))
        elif node.name in gone:
            out.append((node.path, _passthrough))
        else:
            key = (
                node.extra["out"]
                if node.kind in PRUNABLE_NODES
                else (node.name, node.extra.get("cdim", -1))
            )
            cdim = node.extra.get("cdim", -1)
            hook = _zero_removed(
                state, state.root(key) if node.kind in PRUNABLE_NODES else state.g.space(*key), cdim
            )
            if hook is not None:
                out.append((node.path, hook))
    out += [(p.module, _const(p.fill)) for p in patches_of(state) if p.fill in ("zero", "one")]
    return out


@contextmanager
def fine_reference(root: nn.Module, state: FineState) -> Iterator[None]:
    """Within the context, ``root`` computes what the pruned state should compute."""
    handles = []
    try:
        for path, hook in _hooks(state):
            module = root.get_submodule(path)
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
