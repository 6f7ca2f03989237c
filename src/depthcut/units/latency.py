"""Per-unit decode and prefill latency, measured once on the current device (``--budget
latency=F``, ``prefill=F``).

Units do not cost what their parameter counts say: an attention sublayer reads its KV cache,
a block carries norms and residual adds, small matrices run below peak. The table is measured
where the model runs: ``steps`` greedy decode steps of batch 1 after a ``context``-token prompt,
with forward hooks timing every module a unit consists of (synchronised on CUDA). The total
per-token time comes from the same steps, so the units' shares are measured under the same
load (their nested intervals never add up to more than it). Saved in ``scores.json`` (``latency``)
and reused by every plan made from those scores. Prefill is timed the same way on one uncached
forward of a long prompt; a module's captured inputs can be replayed through it (or through a
sliced copy) to time it alone.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from depthcut.devices import device_of
from depthcut.errors import ConfigError
from depthcut.timing import CpuWatch, timing_quality
from depthcut.units.discover import Unit


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def decode_seconds(
    model: nn.Module, ids: torch.Tensor, steps: int, sync, start=lambda: None
) -> float:
    """Seconds per token of ``steps`` cached decode steps after the prompt ``ids`` (``start``
    is called between the prompt and the steps)."""
    with torch.no_grad():
        out = model(ids, use_cache=True)
        past = getattr(out, "past_key_values", None)
        if past is None:
            raise ConfigError("--budget latency: the model has no KV cache (decoder LLMs only)")
        token = out.logits[:, -1:].argmax(-1)
        start()
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            out = model(token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        sync()
    return (time.perf_counter() - started) / steps


def timing_hooks(modules: dict[str, nn.Module], spent: dict[str, float], sync) -> list:
    started: dict[str, float] = {}
    handles = []
    for path in spent:

        def pre(m, a, path=path):
            sync()
            started[path] = time.perf_counter()

        def post(m, a, o, path=path):
            sync()
            spent[path] += time.perf_counter() - started[path]

        handles.append(modules[path].register_forward_pre_hook(pre))
        handles.append(modules[path].register_forward_hook(post))
    return handles


def prompt_ids(model: nn.Module, context: int, seed: int = 0) -> torch.Tensor:
    """A fixed pseudo-random prompt of ``context`` tokens on the model's device."""
    vocab = int(getattr(model.config, "vocab_size", 2))
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, context), generator=g).to(device_of(model))


def warmed_prompt(model: nn.Module, context: int, seed: int = 0) -> torch.Tensor:
    """``prompt_ids`` after two untimed decode steps with it (the warm-up every timing needs)."""
    ids = prompt_ids(model, context, seed)
    decode_seconds(model, ids, 2, synchronizer(torch.device(device_of(model))))
    return ids


def timed_decode(
    model: nn.Module, ids: torch.Tensor, paths: list[str], steps: int
) -> tuple[float, dict[str, float]]:
    """(seconds per token, {module path: its seconds per token}) of ``steps`` cached decode
    steps after the prompt ``ids``, timed by forward hooks on the modules ``paths``."""
    sync = synchronizer(torch.device(device_of(model)))
    modules = dict(model.named_modules())
    spent = dict.fromkeys(sorted(set(paths)), 0.0)
    handles = timing_hooks(modules, spent, sync)
    try:
        reset = lambda: spent.update(dict.fromkeys(spent, 0.0))  # noqa: E731
        total = decode_seconds(model, ids, steps, sync, start=reset)
    finally:
        for h in handles:
            h.remove()
    return total, {p: t / steps for p, t in spent.items()}


def unit_latency(
    model: nn.Module,
    units: list[Unit],
    context: int = 64,
    steps: int = 16,
    seed: int = 0,
    repeats: int = 3,
) -> dict:
    """{"units": {unit id: seconds per decoded token}, "total": seconds per token, "device",
    "context", "steps", "spread", "other_cpu", "unreliable"} of ``model`` on its own device:
    medians of ``repeats`` runs, with the total's spread and why to distrust it, if at all."""
    ids = warmed_prompt(model, context, seed)
    paths = [p for u in units for p in u.modules]
    watch = CpuWatch()
    watch.start()
    runs = [timed_decode(model, ids, paths, steps) for _ in range(repeats)]
    found = unit_medians(units, runs, watch.stop())
    return found | {"device": str(device_of(model)), "context": context, "steps": steps}


def unit_medians(units: list[Unit], runs: list[tuple[float, dict[str, float]]], other_cpu):
    """{"units": {unit id: median seconds}, "total": median seconds, "spread", "other_cpu",
    "unreliable"} of timed runs ((total, {module path: seconds}) each)."""
    totals = [total for total, _ in runs]
    per_unit = {u.id: [sum(t[p] for p in u.modules) for _, t in runs] for u in units}
    return {
        "units": {uid: statistics.median(v) for uid, v in per_unit.items()},
        "total": statistics.median(totals),
    } | timing_quality(totals, other_cpu)


def timed_prefill(
    model: nn.Module, ids: torch.Tensor, paths: list[str]
) -> tuple[float, dict[str, float]]:
    """(seconds, {module path: its seconds}) of one uncached forward of the prompt ``ids``,
    timed by forward hooks on the modules ``paths``."""
    sync = synchronizer(torch.device(device_of(model)))
    modules = dict(model.named_modules())
    spent = dict.fromkeys(sorted(set(paths)), 0.0)
    handles = timing_hooks(modules, spent, sync)
    try:
        with torch.no_grad():
            sync()
            started = time.perf_counter()
            model(ids, use_cache=False)
            sync()
            total = time.perf_counter() - started
    finally:
        for h in handles:
            h.remove()
    return total, spent


def unit_prefill(model: nn.Module, units: list[Unit], ids: torch.Tensor, repeats: int = 2) -> dict:
    """{"units": {unit id: seconds}, "total": seconds, "context", "spread", "other_cpu",
    "unreliable"} of one uncached forward of the prompt ``ids`` (medians of ``repeats`` runs
    after an untimed one)."""
    with torch.no_grad():
        model(ids, use_cache=False)
    paths = [p for u in units for p in u.modules]
    watch = CpuWatch()
    watch.start()
    runs = [timed_prefill(model, ids, paths) for _ in range(repeats)]
    return unit_medians(units, runs, watch.stop()) | {"context": int(ids.shape[1])}


def captured_inputs(model: nn.Module, ids: torch.Tensor, paths: list[str]) -> dict[str, tuple]:
    """{module path: (args, kwargs)} each module received in one uncached forward of ``ids``."""
    modules = dict(model.named_modules())
    got: dict[str, tuple] = {}

    def keeper(path: str):
        def pre(m, args, kwargs):
            got[path] = (args, kwargs)

        return pre

    handles = [modules[p].register_forward_pre_hook(keeper(p), with_kwargs=True) for p in paths]
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return got


def replay_seconds(module: nn.Module, inputs: tuple, sync) -> float:
    """Seconds ``module`` takes on the captured ``inputs`` (args, kwargs)."""
    args, kwargs = inputs
    with torch.no_grad():
        sync()
        started = time.perf_counter()
        module(*args, **kwargs)
        sync()
    return time.perf_counter() - started
