"""Units (blocks, attention and MLP sublayers) and parameter accounting."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from depthcut.graph.structure import ModelStructure, require_sublayer
from depthcut.kinds import FineOp, Kind, UnitRef


@dataclass(frozen=True)
class Unit:
    """One removable thing: ``kind`` at original block index ``block``.

    ``modules`` are the dotted paths of the modules that disappear with it (a sublayer takes
    its coupled norms along); ``params`` counts their unique parameters. A fine unit also says
    what its module is (``op``); it is saved as ``fine.<op>``.
    """

    kind: Kind
    block: int
    path: str
    modules: tuple[str, ...]
    params: int
    op: FineOp | None = None

    @property
    def ref(self) -> UnitRef:
        return UnitRef(self.kind, self.block, self.path)

    @property
    def id(self) -> str:
        """``block:3``, ``mlp:7``; fine-grained units by module path."""
        return self.ref.id

    @property
    def label(self) -> str:
        """``block``, ``mlp``…, ``fine.linear``: the kind as saved in scores.json."""
        return f"{self.kind}.{self.op}" if self.kind is Kind.FINE else str(self.kind)

    def sort_key(self) -> tuple[int, int, str]:
        attention = self.op is FineOp.ATTENTION
        order = Kind.ATTENTION.order if attention else self.kind.order
        return (self.block, order, self.path)

    def to_dict(self) -> dict:
        fields = ("block", "path", "params")
        return {"kind": self.label, "modules": list(self.modules)} | {
            f: getattr(self, f) for f in fields
        }

    @classmethod
    def from_dict(cls, data: dict) -> Unit:
        kind, _, op = data["kind"].partition(".")
        return cls(
            Kind(kind),
            data["block"],
            data["path"],
            tuple(data["modules"]),
            data["params"],
            FineOp(op) if op else None,
        )


def unique_params(modules: list[nn.Module]) -> int:
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


def count_params(model: nn.Module) -> int:
    return unique_params([model])


def embedding_params(model: nn.Module, structure: ModelStructure) -> int:
    """Token/position embeddings plus a vocabulary-sized output head (tied weights once)."""
    modules = dict(model.named_modules())
    parts: list[nn.Module] = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    for path in structure.tail or ():
        head = modules[path]
        if isinstance(head, nn.Linear) and head.out_features == vocab:
            parts.append(head)
    own = {id(p): p.numel() for m in parts for p in m.parameters(recurse=False)}
    return sum(own.values())  # not a stream patch hosted by the embedding


def discover_units(
    model: nn.Module, structure: ModelStructure, kinds: tuple[str, ...]
) -> list[Unit]:
    """All units of the requested kinds, in block order."""
    modules = dict(model.named_modules())
    units: list[Unit] = []
    for block in structure.blocks:
        for kind in sorted(map(Kind, kinds), key=lambda k: k.order):
            if kind is Kind.BLOCK:
                paths: tuple[str, ...] = (block.path,)
                path = block.path
            else:
                sub = require_sublayer(block, kind)
                paths = tuple(sub.modules)
                path = sub.path
            params = unique_params([modules[p] for p in paths])
            units.append(Unit(kind, block.index, path, paths, params))
    return units
