"""Per-unit decode latency of heads and neurons (``--budget latency=F`` with width units).

A head or neuron is a slice of its layer, and what slicing saves is not what its parameter share
says: small matrices run below peak and a layer keeps fixed costs (norms, the attention's
softmax and cache reads) whatever its width. So the saving is measured, at two widths: every
layer of the kind is timed by forward hooks during cached batch-1 decode steps of the dense
model, and again with a copy of each layer swapped in that has half its units sliced out by the
same surgery a plan uses (all layers at once: the extra memory is half of every timed layer's
weights, plus one layer's full copy while it is being sliced).
A unit of a layer costs (time at full width − time at half width) ÷ units removed, seconds per
decoded token: the mean slope over the half a plan can reach. Dense and sliced runs alternate,
each timed ``repeats`` times, and the fastest of each is kept, so a busy machine does not make
one width look dearer than the other.
"""

from __future__ import annotations

import copy

from torch import nn

from depthcut.devices import device_of
from depthcut.errors import UnsupportedModelError
from depthcut.methods.width.apply import prune_width
from depthcut.methods.width.layers import WidthLayer
from depthcut.timing import CpuWatch, timing_quality
from depthcut.units.latency import timed_decode, warmed_prompt

FLOOR = 1e-12  # seconds: a unit whose measured saving is not positive (timer noise)


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent, _, name = path.rpartition(".")
    return model.get_submodule(parent), name


def _halved(model: nn.Module, layers: list[WidthLayer]) -> dict[str, nn.Module]:
    """Swap in a copy of every layer's module with half its units sliced out; returns the
    originals ({module path: module}) to put back."""
    return swap_sliced(model, layers, lambda layer: layer.size // 2)


def swap_sliced(model: nn.Module, layers: list[WidthLayer], removed) -> dict[str, nn.Module]:
    """Swap in a copy of every layer's module with its first ``removed(layer)`` units sliced
    out; returns the originals ({module path: module}) for ``restore``."""
    originals = {}
    for layer in layers:
        if any(not p.path.startswith(layer.module + ".") for p in layer.parts):
            raise UnsupportedModelError(
                f"--budget latency: {layer.id}'s projections are not all inside {layer.module}"
            )
        parent, name = _parent(model, layer.module)
        originals[layer.module] = getattr(parent, name)
        setattr(parent, name, copy.deepcopy(originals[layer.module]))
        prune_width(model, layer, list(range(removed(layer))))
    return originals


def restore(model: nn.Module, originals: dict[str, nn.Module]) -> None:
    for path, module in originals.items():
        parent, name = _parent(model, path)
        setattr(parent, name, module)


def _fastest(model, ids, paths, steps, repeats, layers) -> tuple[list, list]:
    """(dense timings, halved timings): ``repeats`` alternating runs of each."""
    dense, halved = [], []
    for _ in range(repeats):
        dense.append(timed_decode(model, ids, paths, steps))
        originals = _halved(model, layers)
        try:
            halved.append(timed_decode(model, ids, paths, steps))
        finally:
            restore(model, originals)
    return dense, halved


def width_latency(
    model: nn.Module,
    layers: list[WidthLayer],
    context: int = 64,
    steps: int = 16,
    repeats: int = 3,
    seed: int = 0,
) -> dict:
    """{"layers": {layer id: seconds per decoded token one unit costs}, "total": seconds per
    token of the dense model, "device", "context", "steps"}, measured on the model's device."""
    layers = [w for w in layers if w.size > 1]
    ids = warmed_prompt(model, context, seed)
    paths = [w.module for w in layers]
    watch = CpuWatch()
    watch.start()
    dense, halved = _fastest(model, ids, paths, steps, repeats, layers)
    other_cpu = watch.stop()
    full = {p: min(t[p] for _, t in dense) for p in paths}
    half = {p: min(t[p] for _, t in halved) for p in paths}
    return {
        "layers": {
            w.id: max((full[w.module] - half[w.module]) / (w.size // 2), FLOOR) for w in layers
        },
        "total": min(total for total, _ in dense),
        "device": str(device_of(model)),
        "context": context,
        "steps": steps,
    } | timing_quality([total for total, _ in dense], other_cpu)
