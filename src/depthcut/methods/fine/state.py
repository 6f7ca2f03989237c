"""Prune(f) on the graph (thesis §3.2): identity replacement, dimension reconciliation,
FindAct / FindNorm, as a symbolic state; patches and surgery live in ``fine_patch`` and
``surgery/fine.py``.

Every width space keeps its *alive labels* (original channel indices). Pruning a
transformation f: R^a → R^b replaces it by identity; when a ≠ b the larger side's space loses
|a − b| labels (lowest group-Taylor importance, or the labels a plan recorded), and the
removal closes over concat links and the identity links of units pruned before. Then f's
input and output spaces are linked label by label. Spaces marked frozen (graph inputs and
outputs, attention internals, slicing, reshapes) are never shrunk: a unit that would need it
is refused with the reason.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from depthcut.errors import UnsupportedModelError
from depthcut.graph.nodes import FineGraph, FNode
from depthcut.kinds import FineOp
from depthcut.ops import is_conv1d

PRUNABLE_NODES = ("transform", "attention")  # graph node kinds a fine unit can be


class UnitRefused(UnsupportedModelError):
    """Prune(f) is not possible for this unit (the message says why)."""


@dataclass(frozen=True)
class FineUnit:
    """A prunable node of G: an attention region or a single Linear/Conv layer."""

    node: str
    module: str  # path relative to the graph root
    op: FineOp
    params: int
    reason: str | None = None  # why it is excluded from the search space, if it is

    @property
    def is_attention(self) -> bool:
        return self.op is FineOp.ATTENTION


def unit_op(module: nn.Module, node: FNode) -> FineOp:
    if node.kind == "attention":
        return FineOp.ATTENTION
    return FineOp.CONV if isinstance(module, nn.modules.conv._ConvNd) else FineOp.LINEAR


def exclusion(graph: FineGraph, node: FNode, module: nn.Module) -> str | None:
    """Why a node cannot be a unit (None when it can)."""
    x = graph.nodes[node.inputs[0]].dims
    if node.kind == "transform" and isinstance(module, nn.modules.conv._ConvNd):
        if tuple(x[2:]) != tuple(node.dims[2:]):
            return f"changes the spatial size {tuple(x[2:])} → {tuple(node.dims[2:])}"
        if module.groups != 1:
            return f"grouped conv (groups={module.groups})"
    return None


def fine_units(graph: FineGraph, root: nn.Module, include_excluded: bool = False):
    """Units of G in graph order (excluded ones only with ``include_excluded``)."""
    out = []
    for node in graph.module_nodes(PRUNABLE_NODES):
        module = root.get_submodule(node.path)
        reason = exclusion(graph, node, module)
        params = sum(p.numel() for p in module.parameters())
        unit = FineUnit(node.name, node.path, unit_op(module, node), params, reason)
        if reason is None or include_excluded:
            out.append(unit)
    return out


class FineState:
    """Which units of one graph instance are pruned, and the alive labels of every space."""

    def __init__(self, graph: FineGraph):
        self.g = graph
        self.alive: dict[tuple, list[int]] = {}
        self.id_pairs: list[tuple[tuple, tuple, dict[int, int]]] = []
        self.pruned: list[str] = []
        self.removed: set[str] = set()
        self.labels: dict[str, list[int]] = {}  # unit node -> labels removed in its anchor

    def root(self, key: tuple) -> tuple:
        return self.g.spaces.find(key)

    def alive_of(self, root: tuple) -> list[int]:
        if root not in self.alive:
            self.alive[root] = list(range(self.g.sizes[root]))
        return self.alive[root]

    def in_out(self, node: FNode) -> tuple[tuple, tuple]:
        return self.root(node.extra["in"]), self.root(node.extra["out"])

    def neighbours(self, key: tuple):
        r, label = key
        for link in self.g.links:
            out, src = self.root(link.out), self.root(link.src)
            if r == src and label < link.size:
                yield (out, link.offset + label)
            if r == out and link.offset <= label < link.offset + link.size:
                yield (src, label - link.offset)
        for a, b, pairs in self.id_pairs:
            if r == a and label in pairs:
                yield (b, pairs[label])
            if r == b:
                back = next((x for x, y in pairs.items() if y == label), None)
                if back is not None:
                    yield (a, back)

    def closure(self, key: tuple) -> set[tuple]:
        seen, todo = {key}, deque([key])
        while todo:
            for nxt in self.neighbours(todo.popleft()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def frozen_reason(self, keys: set[tuple]) -> str | None:
        return next((self.g.frozen[r] for r, _ in keys if r in self.g.frozen), None)

    def remove_labels(self, anchor: tuple, labels: list[int]) -> None:
        for label in labels:
            keys = self.closure((anchor, label))
            reason = self.frozen_reason(keys)
            if reason:
                raise UnitRefused(f"label {label} of a space is tied to a frozen one ({reason})")
            for r, lab in keys:
                if lab in self.alive_of(r):
                    self.alive_of(r).remove(lab)

    def choose(self, anchor: tuple, need: int, scores: dict | None, what: str) -> list[int]:
        """``need`` labels of ``anchor`` with the lowest closure importance."""
        ranked = []
        for label in self.alive_of(anchor):
            keys = self.closure((anchor, label))
            if self.frozen_reason(keys) is None:
                ranked.append((self.closure_score(keys, scores), label, keys))
        ranked.sort(key=lambda t: (t[0], t[1]))
        chosen: list = []
        count, taken = 0, set[tuple]()
        for _score, label, keys in ranked:
            if (anchor, label) in taken:
                continue
            gain = sum(1 for r, lab in keys if r == anchor and lab in self.alive_of(anchor))
            if count + gain <= need and self._leaves_width(taken | keys):
                chosen.append(label)
                count += gain
                taken |= keys
            if count == need:
                return chosen
        reason = self.frozen_reason(self.closure((anchor, self.alive_of(anchor)[0])))
        raise UnitRefused(
            f"{what}: reconciling its dimensions needs {need} removable channels of a space that "
            f"has {count} ({reason or 'not enough channels'})"
        )

    def _leaves_width(self, keys: set[tuple]) -> bool:
        """True when removing ``keys`` leaves every space at least one channel."""
        roots = {r for r, _ in keys}
        return all(
            len(set(self.alive_of(r)) - {lab for q, lab in keys if q == r}) > 0 for r in roots
        )

    def closure_score(self, keys: set[tuple], scores: dict | None) -> float:
        if not scores:
            return 0.0
        return float(sum(scores[r][lab] for r, lab in keys if r in scores))

    def prune(self, unit: str, labels: list[int] | None = None, scores: dict | None = None):
        """Apply Prune(f) for the unit node ``unit``; returns the removed anchor labels."""
        node = self.g.nodes[unit]
        if unit in self.pruned:
            raise UnitRefused(f"{node.module}: already pruned")
        followers = find_act(self.g, node, self.removed)
        a_root, b_root = self.in_out(node)
        a, b = len(self.alive_of(a_root)), len(self.alive_of(b_root))
        if a != b:
            anchor = b_root if a < b else a_root
            if labels is None:
                labels = self.choose(anchor, abs(a - b), scores, node.path)
            self.remove_labels(anchor, list(labels))
            if len(self.alive_of(a_root)) != len(self.alive_of(b_root)):
                raise UnitRefused(f"{node.module}: its input and output widths cannot be matched")
        if a_root != b_root:
            pairs = dict(zip(self.alive_of(a_root), self.alive_of(b_root)))
            self.id_pairs.append((a_root, b_root, pairs))
        self.pruned.append(unit)
        self.labels[unit] = list(labels or [])
        self.removed |= set(followers)
        self.removed |= find_norms(self.g, set(self.pruned), self.removed)
        return self.labels[unit]

    def copy(self) -> FineState:
        new = FineState(self.g)
        new.alive = {k: list(v) for k, v in self.alive.items()}
        new.id_pairs = [(a, b, dict(p)) for a, b, p in self.id_pairs]
        new.pruned, new.removed = list(self.pruned), set(self.removed)
        new.labels = {k: list(v) for k, v in self.labels.items()}
        return new


def find_act(graph: FineGraph, node: FNode, removed: set[str]) -> list[str]:
    """FindAct: the norm/activation chain that only follows ``node`` (conv → bn → act)."""
    out: list[str] = []
    value = node.name
    while True:
        users = graph.consumers(value)
        if len(users) != 1 or users[0].kind not in ("act", "norm") or users[0].name in removed:
            return out
        user = users[0]
        if user.inputs != [value]:
            return out
        if user.module is None:
            raise UnitRefused(
                f"{node.module}: the activation {user.op} after it is a functional op, not a "
                "module, so it cannot be removed with it"
            )
        out.append(user.name)
        if user.kind == "act":
            return out
        value = user.name


def find_norms(graph: FineGraph, pruned: set[str], removed: set[str]) -> set[str]:
    """FindNorm: norms (before a unit) all of whose consumers are pruned units."""
    out = set()
    for node in graph.module_nodes(("norm",)):
        if node.name in removed:
            continue
        users = graph.consumers(node.name)
        if users and all(u.name in pruned and u.kind in PRUNABLE_NODES for u in users):
            out.add(node.name)
    return out


def param_dims(graph: FineGraph, node: FNode, name: str, p: torch.Tensor, module) -> list:
    """The space root of each dim of parameter ``name`` of a module node (None: fixed)."""
    if node.kind == "attention":
        return [None] * p.dim()
    if node.kind == "transform":
        i, o = graph.spaces.find(node.extra["in"]), graph.spaces.find(node.extra["out"])
        if p.dim() == 1:
            return [o]
        first, second = (i, o) if is_conv1d(module) else (o, i)
        return [first, second] + [None] * (p.dim() - 2)
    if p.dim() == 1:
        return [graph.space(node.name, node.extra.get("cdim", -1))]
    return [None] * p.dim()
