"""Identity patching (thesis §3.2.3) of a pruned graph state.

After pruning, an add or mul may receive the *same* tensor twice through identity paths
(``x + x`` when a residual branch became identity, ``x ⊙ x`` when both MLP branches did). The
duplicate operand is replaced by the op's identity element — the module that produced it
becomes a constant stand-in (0 for add, 1 for mul) — so ``x + x`` computes ``x + 0``. A sum
tree (``a + b + x``, GPT-NeoX's parallel residual) is flattened first. A concat receiving
copies of one tensor keeps one copy; depthcut then *folds* the consumers' weight columns of
the dropped copy into the kept one (exact, where the thesis' "width-prune the consumers" drops
them), and the dropped copy's stand-in returns an empty tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from depthcut.graph.nodes import FineGraph, FNode
from depthcut.methods.fine.state import PRUNABLE_NODES, FineState


@dataclass
class Patch:
    fill: str  # "zero" | "one" | "empty"
    module: str  # the module replaced by a constant stand-in
    op: str  # the add / mul / cat node patched
    dim: int = -1
    folds: list[tuple[str, int, int]] = field(default_factory=list)  # (consumer, keep, drop)


class Patcher:
    """Computes the patches of a state (pure: the state is not changed)."""

    def __init__(self, state: FineState):
        self.s, self.g = state, state.g
        self.patches: list[Patch] = []
        self.resolved: dict[str, str] = {}  # patched op -> the operand it now passes through
        self.const: set[str] = set()  # modules replaced by a stand-in

    def source(self, value: str) -> str:
        node = self.g.nodes[value]
        if value in self.resolved:
            return self.source(self.resolved[value])
        if node.name in self.s.removed or (node.kind in PRUNABLE_NODES and value in self.s.pruned):
            return self.source(node.inputs[0])
        return value

    def run(self) -> list[Patch]:
        for name in self.g.order:
            node = self.g.nodes[name]
            if node.kind == "arith" and node.op == "add" and not self._inner_add(node):
                self._patch_sum(node)
            elif node.kind == "arith" and node.op == "mul" and len(node.inputs) == 2:
                self._patch_mul(node)
            elif node.kind == "concat":
                self._patch_concat(node)
        return self.patches

    def _inner_add(self, node: FNode) -> bool:
        users = self.g.consumers(node.name)
        return len(users) == 1 and users[0].kind == "arith" and users[0].op == "add"

    def _terms(self, node: FNode) -> list[str]:
        terms = []
        for value in node.inputs:
            inner = self.g.nodes[value]
            if inner.kind == "arith" and inner.op == "add" and self._inner_add(inner):
                terms += self._terms(inner)
            else:
                terms.append(value)
        return terms

    def _patch_sum(self, node: FNode) -> None:
        terms = self._terms(node)
        zeroed = set()
        for src in {self.source(t) for t in terms}:
            same = [t for t in terms if self.source(t) == src]
            keep = next((t for t in same if self.stand_in(t, node) is None), same[0])
            for term in same:
                module = self.stand_in(term, node) if term != keep else None
                if module is not None:
                    self._const(Patch("zero", module, node.name))
                    zeroed.add(term)
        live = [t for t in terms if t not in zeroed]
        if zeroed and len(live) == 1:
            self.resolved[node.name] = live[0]

    def _patch_mul(self, node: FNode) -> None:
        a, b = node.inputs
        if self.source(a) != self.source(b):
            return
        for drop, keep in ((b, a), (a, b)):
            module = self.stand_in(drop, node)
            if module is not None:
                self._const(Patch("one", module, node.name))
                self.resolved[node.name] = keep
                return

    def _patch_concat(self, node: FNode) -> None:
        users = self.g.consumers(node.name)
        if not users or any(u.kind != "transform" or u.inputs[0] != node.name for u in users):
            return
        offsets = self._offsets(node)
        for d, value in enumerate(node.inputs):
            k = next(
                (k for k in range(d) if self.source(node.inputs[k]) == self.source(value)), None
            )
            module = self.stand_in(value, node) if k is not None else None
            if k is None or module is None:
                continue
            pairs = self._pairs(node, offsets, k, d)
            if pairs is None:
                continue
            folds = [(u.path, keep, drop) for u in users for keep, drop in pairs]
            self._const(Patch("empty", module, node.name, node.extra["dim"], folds))

    def _offsets(self, node: FNode) -> list[int]:
        dim, out, pos = node.extra["dim"], [], 0
        for value in node.inputs:
            out.append(pos)
            pos += self.g.nodes[value].dims[dim]
        return out

    def _pairs(self, node: FNode, offsets: list[int], k: int, d: int):
        """(kept label, dropped label) of the concat output space, copy d folded into k."""
        dim = node.extra["dim"]
        root = self.g.space(node.name, dim)
        seg = range(offsets[k], offsets[k] + self.g.nodes[node.inputs[k]].dims[dim])
        pairs = []
        for label in self.s.alive_of(root):
            if not offsets[d] <= label < offsets[d] + self.g.nodes[node.inputs[d]].dims[dim]:
                continue
            partner = [lab for r, lab in self.s.closure((root, label)) if r == root and lab in seg]
            if not partner:
                return None
            pairs.append((partner[0], label))
        return pairs

    def _const(self, patch: Patch) -> None:
        self.patches.append(patch)
        self.const.add(patch.module)

    def stand_in(self, term: str, consumer: FNode) -> str | None:
        """The outermost module that produced ``term`` for ``consumer`` and now computes an
        identity of its input (every node inside it pruned, removed or patched)."""
        exited = [p for p in self.g.nodes[term].stack if p not in consumer.stack]
        for path in exited:
            if path in self.const:
                return None
            if self._identity_inside(path):
                return path
        return None

    def _identity_inside(self, path: str) -> bool:
        inside = [
            n
            for n in self.g.nodes.values()
            if n.kind != "input" and (path in n.stack or n.module == path)
        ]
        return bool(inside) and all(self._is_identity(n) for n in inside)

    def _is_identity(self, node: FNode) -> bool:
        if node.name in self.s.removed or node.name in self.resolved:
            return True
        if node.kind in PRUNABLE_NODES and node.name in self.s.pruned:
            return True
        return node.module is not None and node.module in self.const


def patches_of(state: FineState) -> list[Patch]:
    return Patcher(state).run()


def dropped_labels(graph: FineGraph, patches: list[Patch]) -> dict[str, set[int]]:
    """Consumer module → input labels dropped by concat folds."""
    out: dict[str, set[int]] = {}
    for patch in patches:
        for consumer, _keep, drop in patch.folds:
            out.setdefault(consumer, set()).add(drop)
    return out
