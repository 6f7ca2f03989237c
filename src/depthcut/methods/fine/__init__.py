"""Fine family: Prune(f) of single Linear / Conv layers and attention regions on the traced
graph (thesis Chapter 3). ``state`` (alive channel labels, reconciliation), ``model`` (the
graph once per run, roots, replay), ``patch`` / ``surgery`` (hooks and physical slicing),
``reference`` (the hook-level reference), ``importance`` (Eq. 3.10 / 3.11), ``planner``
(interleave / unified / ranked / iterative), ``cnn`` (Algorithm 9)."""

from depthcut.methods.fine.family import FineFamily

__all__ = ["FineFamily"]
