"""Depth family: whole blocks and attention / MLP sublayers. ``family`` (the Family),
``planner`` (budgeted selection from scores), ``surgery`` (removal from the block stack);
their metrics are the shared registry's (``depthcut.importance``)."""

from depthcut.methods.depth.family import DepthFamily

__all__ = ["DepthFamily"]
