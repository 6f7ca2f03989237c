"""Registry of importance metrics, filled by ``@register_importance`` in each metric's file."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from depthcut.errors import ConfigError

_REGISTRY: dict[str, type] = {}
_MODULES = ("depthcut.importance.local", "depthcut.importance.logits")


def register_importance(name: str) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"importance {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load() -> None:
    for module in _MODULES:
        importlib.import_module(module)


def available() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get_importance(name: str) -> type:
    _load()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown importance {name!r}; known: {', '.join(available())}")
    return _REGISTRY[name]
