"""One registry of importance metrics for every family, keyed by (family, name).

A metric's module registers it with ``@register_importance(name, family=...)``: the depth
metrics live in ``depthcut.importance.local`` / ``logits`` / ``repaired`` (loaded here on
first use), the width and fine metrics in their family's ``importance`` module (loaded with
the family). ``config`` checks names against its own lists, and a test checks that the
registry implements exactly those lists.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from depthcut.errors import ConfigError

_REGISTRY: dict[tuple[str, str], object] = {}
_MODULES = (
    "depthcut.importance.local",
    "depthcut.importance.logits",
    "depthcut.importance.repaired",
)


def register_importance(name: str, family: str = "depth") -> Callable:
    """Class or function decorator: ``name`` becomes a metric of ``family``."""

    def decorate(metric):
        if (family, name) in _REGISTRY:
            raise ValueError(f"{family} importance {name!r} registered twice")
        metric.name = name
        _REGISTRY[(family, name)] = metric
        return metric

    return decorate


def _load() -> None:
    for module in _MODULES:
        importlib.import_module(module)


def available(family: str = "depth") -> list[str]:
    _load()
    return sorted(name for fam, name in _REGISTRY if fam == family)


def get_importance(name: str, family: str = "depth"):
    _load()
    if (family, name) not in _REGISTRY:
        prefix = "" if family == "depth" else f"{family} "
        known = ", ".join(available(family))
        raise ConfigError(f"unknown {prefix}importance {name!r}; known: {known}")
    return _REGISTRY[(family, name)]
