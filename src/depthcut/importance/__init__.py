"""Importance metrics, registered by name (``depthcut.importance.available()``)."""

from depthcut.importance.registry import available, get_importance

__all__ = ["available", "get_importance"]
