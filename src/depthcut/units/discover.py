"""Units (blocks, attention and MLP sublayers) and parameter accounting."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from depthcut.graph.structure import ModelStructure, require_sublayer

KIND_ORDER = {"block": 0, "attention": 1, "mlp": 2}
KIND_ORDER |= {"fine.attention": 1, "fine.linear": 2, "fine.conv": 2}


@dataclass(frozen=True)
class Unit:
    """One removable thing: ``kind`` at original block index ``block``.

    ``modules`` are the dotted paths of the modules that disappear with it (a sublayer takes
    its coupled norms along); ``params`` counts their unique parameters.
    """

    kind: str
    block: int
    path: str
    modules: tuple[str, ...]
    params: int

    @property
    def id(self) -> str:
        """``block:3``, ``mlp:7``; fine-grained units by module path."""
        return self.path if self.kind.startswith("fine.") else f"{self.kind}:{self.block}"

    def sort_key(self) -> tuple[int, int, str]:
        return (self.block, KIND_ORDER[self.kind], self.path)


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
    return unique_params(parts)


def discover_units(
    model: nn.Module, structure: ModelStructure, kinds: tuple[str, ...]
) -> list[Unit]:
    """All units of the requested kinds, in block order."""
    modules = dict(model.named_modules())
    units: list[Unit] = []
    for block in structure.blocks:
        for kind in sorted(kinds, key=KIND_ORDER.get):
            if kind == "block":
                paths = (block.path,)
                path = block.path
            else:
                sub = require_sublayer(block, kind)
                paths = tuple(sub.modules)
                path = sub.path
            params = unique_params([modules[p] for p in paths])
            units.append(Unit(kind, block.index, path, paths, params))
    return units
