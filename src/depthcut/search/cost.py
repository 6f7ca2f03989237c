"""What an option costs to run: decode time per token, prefill time, KV-cache bytes per token,
parameters.

Decode time is measured where the model runs. The dense model's blocks, attentions and MLPs
are timed by forward hooks during cached batch-1 decode (``units.latency.unit_latency``). A
narrowed sublayer's time is its dense time times a measured ratio: copies of the sublayer sliced
to that width (by the surgery a plan uses) are swapped into ``sample`` blocks spread over the
stack and timed against the dense ones, alternating, fastest of ``repeats`` each (every block
of a decoder has the same shapes, so a few stand for all; the extra memory is a few sublayers).
An option's time is then its block's time less what its sublayers save; a removed block saves
all of it. ``depthcut.search.frontier`` checks the prediction on the assembled model and
corrects it.

Prefill time (a ``PREFILL``-token prompt, one uncached forward) is measured the same way: the
dense units by forward hooks, and a narrowed sublayer's ratio by replaying the inputs its
``sample`` dense counterparts received in one prefill through them and through sliced copies,
alternating (only those sublayers run, so the ratios cost a fraction of a forward each).
"""

from __future__ import annotations

import torch
from torch import nn

from depthcut.methods.width.latency import restore, swap_sliced
from depthcut.methods.width.layers import WidthLayer
from depthcut.units.discover import Unit
from depthcut.units.latency import (
    captured_inputs,
    prompt_ids,
    replay_seconds,
    synchronizer,
    timed_decode,
    unit_latency,
    unit_prefill,
    warmed_prompt,
)

PREFILL = 512  # prompt tokens of the prefill timings


def sample_blocks(num_blocks: int, sample: int) -> list[int]:
    """``sample`` block indices spread evenly over the stack (all when fewer)."""
    if num_blocks <= sample:
        return list(range(num_blocks))
    step = num_blocks / sample
    return sorted({int(step * (k + 0.5)) for k in range(sample)})


def _fastest_sum(runs: list[dict[str, float]], paths: list[str]) -> float:
    return sum(min(run[p] for run in runs) for p in paths)


def width_ratio(model, layers: list[WidthLayer], kept: int, ids, steps: int, repeats: int):
    """Time of ``layers`` sliced to ``kept`` units over their dense time (decode hooks)."""
    paths = [w.module for w in layers]
    dense, sliced = [], []
    for _ in range(repeats):
        dense.append(timed_decode(model, ids, paths, steps)[1])
        originals = swap_sliced(model, layers, lambda w: w.size - kept)
        try:
            sliced.append(timed_decode(model, ids, paths, steps)[1])
        finally:
            restore(model, originals)
    ratio = _fastest_sum(sliced, paths) / max(_fastest_sum(dense, paths), 1e-12)
    return min(ratio, 1.0)  # a narrower sublayer measured slower is timer noise (tiny models)


def latency_table(
    model: nn.Module,
    units: list[Unit],
    widths: dict[str, list[WidthLayer]],
    kept_levels: dict[str, list[int]],
    sample: int = 4,
    context: int = 64,
    steps: int = 16,
    repeats: int = 3,
) -> dict:
    """{"units": {unit id: s/token}, "total", "ratios": {sublayer: {kept: ratio}}, spread…}:
    the dense units' decode times and the measured ratios of narrowed sublayers."""
    table = unit_latency(model, units, context, steps, repeats=repeats)
    ids = warmed_prompt(model, context)
    chosen = sampled(widths, sample)
    ratios = level_ratios(
        chosen, kept_levels, lambda ls, kept: width_ratio(model, ls, kept, ids, steps, repeats)
    )
    prefill = prefill_table(model, units, widths, kept_levels, sample)
    return table | {"ratios": ratios, "prefill": prefill}


def sampled(widths: dict[str, list[WidthLayer]], sample: int) -> dict[str, list[WidthLayer]]:
    """Each sublayer kind's ``sample`` layers spread over the stack (the ones timed)."""
    return {k: [v[i] for i in sample_blocks(len(v), sample)] for k, v in widths.items()}


def level_ratios(chosen: dict[str, list[WidthLayer]], kept_levels: dict[str, list[int]], ratio):
    """{kind: {kept: time ratio}}: 1 at full width, 0 removed, ``ratio(layers, kept)`` measured
    for every level in between."""
    out: dict[str, dict[int, float]] = {}
    for kind, layers in chosen.items():
        size = layers[0].size
        out[kind] = {size: 1.0, 0: 0.0}
        for kept in kept_levels[kind]:
            if 0 < kept < size:
                out[kind][kept] = ratio(layers, kept)
    return out


def replay_ratio(model, layers: list[WidthLayer], kept: int, inputs: dict, repeats: int) -> float:
    """Prefill time of ``layers`` sliced to ``kept`` units over their dense time, each run
    alone on its captured prefill inputs (fastest of ``repeats`` alternating runs)."""
    dense = {w.module: model.get_submodule(w.module) for w in layers}
    originals = swap_sliced(model, layers, lambda w: w.size - kept)
    try:
        sliced = {w.module: model.get_submodule(w.module) for w in layers}
    finally:
        restore(model, originals)
    sync = synchronizer(next(model.parameters()).device)
    runs: dict[str, list] = {"dense": [], "sliced": []}
    for _ in range(repeats):
        for name, modules in (("dense", dense), ("sliced", sliced)):
            runs[name].append({p: replay_seconds(m, inputs[p], sync) for p, m in modules.items()})
    ratio = _fastest_sum(runs["sliced"], list(dense)) / max(
        _fastest_sum(runs["dense"], list(dense)), 1e-12
    )
    return min(ratio, 1.0)


def prefill_table(
    model: nn.Module,
    units: list[Unit],
    widths: dict[str, list[WidthLayer]],
    kept_levels: dict[str, list[int]],
    sample: int = 4,
    context: int = PREFILL,
    repeats: int = 3,
) -> dict:
    """{"units": {unit id: seconds}, "total", "ratios": {sublayer: {kept: ratio}}, spread…} of
    one uncached forward of a ``context``-token prompt (at most the model's positions)."""
    context = min(context, int(getattr(model.config, "max_position_embeddings", context)))
    ids = prompt_ids(model, context)
    table = unit_prefill(model, units, ids, repeats=2)
    chosen = sampled(widths, sample)
    inputs = captured_inputs(model, ids, [w.module for v in chosen.values() for w in v])
    ratios = level_ratios(
        chosen, kept_levels, lambda ls, kept: replay_ratio(model, ls, kept, inputs, repeats)
    )
    return table | {"ratios": ratios}


def option_seconds(table: dict, block: int, attention_ratio: float, mlp_ratio: float) -> float:
    """Predicted decode seconds per token of block ``block`` with its sublayers at these
    measured time ratios (both 0: the block is removed and costs nothing)."""
    if attention_ratio == 0 and mlp_ratio == 0:
        return 0.0
    units = table["units"]
    attention, mlp = units[f"attention:{block}"], units[f"mlp:{block}"]
    return units[f"block:{block}"] - attention * (1 - attention_ratio) - mlp * (1 - mlp_ratio)


def kv_bytes(kept_groups: int, head_dim: int, dtype: torch.dtype) -> int:
    """KV-cache bytes per token of one attention keeping ``kept_groups`` KV heads."""
    return 2 * kept_groups * head_dim * torch.finfo(dtype).bits // 8
