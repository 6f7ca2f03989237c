"""Closed-form repair after removal (``--repair ls``): least-squares refits folded into kept
weights, for block / sublayer runs (``ls``), head / neuron consumers (``width``) and the
writers of blocks edited by Prune(f) (``fine``); LinearPatch (``patch``).

``repair`` is imported on first use: the fine family's repair-aware importance imports
``refit.ls`` and ``refit.fine`` imports the fine family, so this package must not load
``refit.run`` when a submodule is imported."""

__all__ = ["repair"]


def __getattr__(name: str):
    if name == "repair":
        from depthcut.refit.run import repair

        return repair
    raise AttributeError(name)
