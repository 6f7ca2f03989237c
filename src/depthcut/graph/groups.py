"""Width dependency: which (value, dim) pairs must shrink together, from G's typed nodes."""

from __future__ import annotations

import math

from torch import nn

from depthcut.errors import UnsupportedModelError
from depthcut.graph.export import export_module, output_arities
from depthcut.graph.nodes import FineGraph, FNode, Link, _Builder, _Spaces


def channel_dim(module: nn.Module) -> int:
    """Channel axis of a module's input/output: 1 for convs and batch norms, else the last."""
    conv_like = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
    return 1 if isinstance(module, conv_like) else -1


class _Relater:
    def __init__(self, root: nn.Module, nodes: dict[str, FNode], order: list[str]):
        self.root, self.nodes, self.order = root, nodes, order
        self.spaces = _Spaces()
        self.links: list[Link] = []
        self.frozen: dict[tuple, str] = {}

    def ndim(self, value: str) -> int:
        return len(self.nodes[value].dims)

    def key(self, value: str, dim: int) -> tuple:
        return (value, dim % self.ndim(value))

    def unify_all(self, a: str, b: str) -> None:
        if self.nodes[a].shape != self.nodes[b].shape:
            self.freeze_all(a, f"shape change at {b}")
            self.freeze_all(b, f"shape change at {b}")
            return
        for d in range(self.ndim(a)):
            self.spaces.union((a, d), (b, d))

    def freeze_all(self, value: str, reason: str) -> None:
        for d in range(self.ndim(value)):
            self.frozen.setdefault((value, d), reason)

    def broadcast(self, operand: str, out: str) -> None:
        a, b = self.nodes[operand].dims, self.nodes[out].dims
        for k in range(1, min(len(a), len(b)) + 1):
            if a[-k] == b[-k]:
                self.spaces.union((operand, len(a) - k), (out, len(b) - k))

    def relate(self, node: FNode) -> None:
        handler = getattr(self, f"_{node.kind}", None)
        if handler is None:
            raise UnsupportedModelError(f"{node.name}: node kind {node.kind} has no width rule")
        handler(node)

    def _input(self, node: FNode) -> None:
        self.freeze_all(node.name, "graph input")

    def _transform(self, node: FNode) -> None:
        module = self.root.get_submodule(node.path)
        x, y, c = node.inputs[0], node.name, channel_dim(module)
        node.extra["cdim"] = c
        if c == 1:
            self.spaces.union((x, 0), (y, 0))
        elif self.ndim(x) == self.ndim(y):
            for d in range(self.ndim(x) - 1):
                self.spaces.union((x, d), (y, d))
        node.extra["in"], node.extra["out"] = self.key(x, c), self.key(y, c)
        if getattr(module, "groups", 1) != 1:
            for key in (node.extra["in"], node.extra["out"]):
                self.frozen.setdefault(key, f"grouped conv {node.module}")

    def _attention(self, node: FNode) -> None:
        x, y = node.inputs[0], node.name
        for d in range(self.ndim(y) - 1):
            self.spaces.union((x, d), (y, d))
        reason = f"attention region {node.module} (its internal widths are not width-pruned)"
        self.frozen.setdefault(self.key(x, -1), reason)
        self.frozen.setdefault(self.key(y, -1), reason)
        node.extra["cdim"], node.extra["in"], node.extra["out"] = (
            -1,
            self.key(x, -1),
            self.key(y, -1),
        )

    def _norm(self, node: FNode) -> None:
        module = self.root.get_submodule(node.path)
        node.extra["cdim"] = channel_dim(module)
        self.unify_all(node.inputs[0], node.name)
        if isinstance(module, nn.GroupNorm):
            self.frozen.setdefault(self.key(node.name, 1), f"group norm {node.module}")

    def _act(self, node: FNode) -> None:
        self.unify_all(node.inputs[0], node.name)

    _pass = _act

    def _arith(self, node: FNode) -> None:
        for operand in node.inputs:
            self.broadcast(operand, node.name)

    def _concat(self, node: FNode) -> None:
        args = node.extra["args"]
        dim = (args[1] if len(args) > 1 and args[1] is not None else 0) % self.ndim(node.name)
        node.extra["dim"], offset = dim, 0
        for x in node.inputs:
            for d in range(self.ndim(x)):
                if d != dim:
                    self.spaces.union((x, d), (node.name, d))
            size = self.nodes[x].dims[dim]
            self.links.append(Link((node.name, dim), offset, (x, dim), size))
            offset += size

    def _pool(self, node: FNode) -> None:
        x = node.inputs[0]
        for d in range(min(2, self.ndim(x), self.ndim(node.name))):
            self.spaces.union((x, d), (node.name, d))

    def _reshape(self, node: FNode) -> None:
        x, y = node.inputs[0], node.name
        mapping = permute_map(node) if node.op in ("permute", "transpose", "t") else None
        if mapping is None:
            mapping = view_map(self.nodes[x].dims, self.nodes[y].dims)
        for dx, dy in mapping.items():
            self.spaces.union((x, dx), (y, dy))
        for d in set(range(self.ndim(x))) - set(mapping):
            self.frozen.setdefault((x, d), f"reshape {node.name}")
        for d in set(range(self.ndim(y))) - set(mapping.values()):
            self.frozen.setdefault((y, d), f"reshape {node.name}")

    def _slice(self, node: FNode) -> None:
        for value in [*node.inputs, node.name]:
            if self.nodes[value].shape is not None:
                self.freeze_all(value, f"{node.op} {node.name}")

    _reduce = _slice


def permute_map(node: FNode) -> dict[int, int]:
    args, n = node.extra["args"], len(node.dims)
    if node.op == "permute":
        return {p % n: i for i, p in enumerate(args[1])}
    if node.op == "t":
        return {0: 1, 1: 0} if n == 2 else {0: 0}
    a, b = args[1] % n, args[2] % n
    perm = list(range(n))
    perm[a], perm[b] = perm[b], perm[a]
    return {p: i for i, p in enumerate(perm)}


def view_map(a: tuple[int, ...], b: tuple[int, ...]) -> dict[int, int]:
    """Dims of ``a`` that survive a view to ``b`` unchanged (same prefix-product boundaries)."""
    ends_b: dict[tuple[int, int], int] = {}
    for j in range(len(b)):
        ends_b.setdefault((math.prod(b[:j]), math.prod(b[: j + 1])), j)
    out: dict[int, int] = {}
    for i in range(len(a)):
        hit = ends_b.get((math.prod(a[:i]), math.prod(a[: i + 1])))
        if hit is not None and a[i] == b[hit]:
            out[i] = hit
    return out


def build_graph(root: nn.Module, args: tuple, kwargs: dict | None = None) -> FineGraph:
    """Export ``root`` on (args, kwargs) and return its typed graph with width spaces."""
    kwargs = kwargs or {}
    ep = export_module(root, args, kwargs)
    nodes, order, outputs = _Builder(root, ep).build()
    rel = _Relater(root, nodes, order)
    for name in order:
        rel.relate(nodes[name])
    for value in outputs:
        rel.freeze_all(value, "graph output")
    sizes = _sizes(rel, nodes)
    frozen: dict[tuple, str] = {}
    for key, reason in rel.frozen.items():
        frozen.setdefault(rel.spaces.find(key), reason)
    arity = output_arities(root, args, {k: v for k, v in kwargs.items()})
    return FineGraph(nodes, order, rel.spaces, sizes, rel.links, frozen, arity, outputs)


def _sizes(rel: _Relater, nodes: dict[str, FNode]) -> dict[tuple, int]:
    sizes: dict[tuple, int] = {}
    for name, node in nodes.items():
        for d, size in enumerate(node.shape or ()):
            root = rel.spaces.find((name, d))
            if sizes.setdefault(root, size) != size:
                raise UnsupportedModelError(
                    f"{node.module or name}: width rules coupled dims of sizes {sizes[root]} and "
                    f"{size}; the graph engine cannot prune this model"
                )
    return sizes
