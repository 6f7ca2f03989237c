"""The option library of a joint plan: what each block can become.

A block keeps or loses its attention and its MLP independently, and a kept sublayer can also
be narrowed: the attention to fewer KV groups (each with the query heads that share it), the
MLP to 7/8, 3/4, … or 1/8 of its neurons (a sublayer with fewer units takes the distinct
eighths it has). An option is one such pair of levels, counted in the units kept (0: the
sublayer is removed; both 0: the whole block goes). A removed block can also go as part of a
run of consecutive removed blocks priced as one (``search.runs``). The search picks exactly one
option per block.
"""

from __future__ import annotations

from dataclasses import dataclass

FRACTIONS = tuple(k / 8 for k in range(8, -1, -1))  # shares of a sublayer's units an option keeps


@dataclass(frozen=True)
class Option:
    """Block ``block`` with ``attention`` of its ``kv_size`` KV groups and ``mlp`` of its
    ``mlp_size`` neurons kept (0 removes the sublayer; both 0 remove the block)."""

    block: int
    attention: int
    mlp: int
    kv_size: int
    mlp_size: int
    run: tuple[int, int] | None = None  # (first block, length): the block goes in that run

    def __post_init__(self) -> None:
        if self.run is not None and not self.removes_block:
            raise ValueError(f"{self}: a block in a run of removed blocks keeps nothing")

    @property
    def is_keep(self) -> bool:
        return self.attention == self.kv_size and self.mlp == self.mlp_size

    @property
    def removes_block(self) -> bool:
        return self.attention == 0 and self.mlp == 0

    @property
    def name(self) -> str:
        """``keep``, ``block``, ``attention``, ``mlp``, ``kv 1/3``, ``mlp 1/2``, both parts
        joined by ``+`` (``kv 2/3 + mlp 3/4``), or ``run of 3`` (the block goes in a run of
        three removed blocks, folded as one)."""
        if self.run is not None:
            return f"run of {self.run[1]}"
        if self.is_keep:
            return "keep"
        if self.removes_block:
            return "block"
        parts = []
        if self.attention != self.kv_size:
            parts.append(
                "attention" if self.attention == 0 else f"kv {_ratio(self.attention, self.kv_size)}"
            )
        if self.mlp != self.mlp_size:
            parts.append("mlp" if self.mlp == 0 else f"mlp {_ratio(self.mlp, self.mlp_size)}")
        return " + ".join(parts)


def _ratio(kept: int, size: int) -> str:
    from fractions import Fraction

    f = Fraction(kept, size)
    return f"{f.numerator}/{f.denominator}" if f.denominator <= 8 else f"{kept}/{size}"


def levels(size: int) -> list[int]:
    """Units kept at each of ``FRACTIONS`` of a sublayer with ``size`` units: distinct, full
    first, 0 last (a narrowed sublayer keeps at least one unit)."""
    out: list[int] = []
    for f in FRACTIONS:
        kept = 0 if f == 0 else max(1, round(size * f))
        if kept not in out:
            out.append(kept)
    return out


def block_options(
    block: int, kv_size: int, mlp_size: int, kept: tuple[list[int], list[int]] | None = None
) -> list[Option]:
    """Every option of one block, ``keep`` first (``kept``: the attention's and the MLP's
    levels, full first and 0 last; by default ``levels`` of each size)."""
    kv_levels, mlp_levels = kept or (levels(kv_size), levels(mlp_size))
    return [Option(block, a, m, kv_size, mlp_size) for a in kv_levels for m in mlp_levels]
