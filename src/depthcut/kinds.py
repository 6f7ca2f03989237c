"""The one unit vocabulary: what kind of thing a unit is, and how it is named.

Every family speaks it: depth (``block``, ``attention``, ``mlp``), width (``head``, ``neuron``)
and fine (Prune(f) of one module). A unit is referred to by a :class:`UnitRef`; its ``id`` is
``kind:block`` (``mlp:7``, ``head:3`` — a width layer) or, for a fine unit, the module path, and
:meth:`UnitRef.parse` is the exact inverse of ``id``. ``Kind`` is a ``str`` enum, so the saved
JSON keeps the plain names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    BLOCK = "block"
    ATTENTION = "attention"
    MLP = "mlp"
    HEAD = "head"
    NEURON = "neuron"
    FINE = "fine"

    @property
    def family(self) -> str:
        """``depth``, ``width`` or ``fine``."""
        return _FAMILY[self]

    @property
    def sublayer(self) -> Kind | None:
        """The sublayer a unit of this kind lives in (a head in attention, a neuron in mlp)."""
        return _SUBLAYER.get(self)

    @property
    def order(self) -> int:
        """Position inside one block: the block, then attention, then MLP."""
        return _ORDER[self]


class FineOp(StrEnum):
    """What a fine unit prunes: an attention region, a Linear or a Conv layer."""

    ATTENTION = "attention"
    LINEAR = "linear"
    CONV = "conv"


_FAMILY = {Kind.BLOCK: "depth", Kind.ATTENTION: "depth", Kind.MLP: "depth"}
_FAMILY |= {Kind.HEAD: "width", Kind.NEURON: "width", Kind.FINE: "fine"}
_SUBLAYER = {Kind.ATTENTION: Kind.ATTENTION, Kind.MLP: Kind.MLP}
_SUBLAYER |= {Kind.HEAD: Kind.ATTENTION, Kind.NEURON: Kind.MLP}
_ORDER = {Kind.BLOCK: 0, Kind.ATTENTION: 1, Kind.HEAD: 1, Kind.MLP: 2, Kind.NEURON: 2}
_ORDER |= {Kind.FINE: 2}

DEPTH_KINDS = tuple(k.value for k in Kind if k.family == "depth")
WIDTH_KINDS = tuple(k.value for k in Kind if k.family == "width")
UNIT_KINDS = DEPTH_KINDS + WIDTH_KINDS + (Kind.FINE.value,)


@dataclass(frozen=True, eq=False)
class UnitRef:
    """One unit (or, for ``head`` / ``neuron``, one width layer): kind, block, module path.

    Two references are equal when their ids are: a depth or width unit is named by its kind and
    block, a fine unit by its module path (the other field is description).
    """

    kind: Kind
    block: int = -1
    path: str = ""

    @property
    def id(self) -> str:
        return self.path if self.kind is Kind.FINE else f"{self.kind}:{self.block}"

    @classmethod
    def parse(cls, unit_id: str) -> UnitRef:
        """The reference an ``id`` names (``UnitRef.parse(ref.id) == ref``)."""
        head, sep, tail = unit_id.partition(":")
        if sep and head in DEPTH_KINDS + WIDTH_KINDS and tail.lstrip("-").isdigit():
            return cls(Kind(head), int(tail))
        return cls(Kind.FINE, path=unit_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnitRef) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)
