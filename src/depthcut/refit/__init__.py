"""Closed-form repair after removal (``--repair ls``): least-squares refits folded into kept
weights, for block / sublayer runs (``ls``) and for head / neuron consumers (``width``)."""

from depthcut.refit.run import repair

__all__ = ["repair"]
