"""Width family: attention heads (KV groups) and MLP neurons. ``layers`` (which channels a
unit owns, from the traced block), ``importance`` (per-unit metrics), ``select`` / ``plan``
(budgeted choice), ``iterative`` (prune → re-score), ``apply`` / ``surgery`` (slicing)."""

from depthcut.methods.width.family import WidthFamily, score_width

__all__ = ["WidthFamily", "score_width"]
