"""Where the joint search's times come from: the option table's decode and prefill costs, and
the measured speed of each assembled candidate that checks them.

``Torch`` (the default) measures in PyTorch on the model's own device (``search.cost``:
forward hooks in cached decode, sliced copies for narrower sublayers). A deployment runtime
(``depthcut.formats.runtime.LlamaCpp``, ``--runtime llamacpp``) implements the same two calls
by timing exported files in that runtime; the search does not know which one it was given,
and an option table records the runtime that timed it.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from depthcut.errors import ConfigError
from depthcut.methods.width.layers import WidthLayer
from depthcut.units.discover import Unit


class Runtime(Protocol):
    """Times options and candidates for the joint search (``name`` is recorded in the option
    table and in each plan)."""

    name: str

    def latency_table(
        self,
        model: nn.Module,
        units: list[Unit],
        widths: dict[str, list[WidthLayer]],
        kept_levels: dict[str, list[int]],
    ) -> dict:
        """``search.cost.latency_table``'s dict: per-unit decode seconds per token, ``total``,
        the narrowed sublayers' time ``ratios`` and the ``prefill`` table of the same form."""
        ...

    def compare(self, dense: nn.Module, pruned: nn.Module, prefill: int | None) -> dict:
        """{"decode": pruned ÷ dense seconds per decoded token, "other_cpu": % of one core
        other processes used, and with a ``prefill`` context "prefill": the same ratio of one
        ``prefill``-token forward}."""
        ...


class Torch:
    """PyTorch on the model's own device (batch 1, cached decode; interleaved comparisons)."""

    name = "torch"

    def latency_table(self, model, units, widths, kept_levels) -> dict:
        """Measured by forward hooks and sliced copies (``search.cost.latency_table``)."""
        from depthcut.search.cost import latency_table

        return latency_table(model, units, widths, kept_levels)

    def compare(self, dense: nn.Module, pruned: nn.Module, prefill: int | None) -> dict:
        """Decode (and prefill) time ratios of interleaved runs, medians."""
        from depthcut.search.joint import decode_ratio, prefill_ratio

        ratio, other = decode_ratio(dense, pruned)
        out = {"decode": ratio, "other_cpu": other}
        if prefill is not None:
            out["prefill"] = prefill_ratio(dense, pruned, prefill)[0]
        return out


TORCH = Torch()


def runtime_name(latency: dict) -> str:
    """The runtime an option table's timings come from (tables before runtimes: PyTorch)."""
    return str(latency.get("runtime", TORCH.name))


def refuse_without_search(name: str, auto: bool) -> None:
    """Refuse a deployment runtime (``name`` other than torch) for a method that does not
    search: only ``units="auto"`` times its options in one."""
    if name != TORCH.name and not auto:
        raise ConfigError(
            f"--runtime {name} times the joint search's options: use it with --units auto (or "
            "a latency / kv budget without --units)"
        )
