"""Latency and throughput on the CPU: prefill time, decode tokens/s, peak RSS.

Decode is measured with the model's own KV cache (``DynamicCache``) in a manual greedy loop so
that prefill is excluded; each number is the median of ``repeats`` runs after a warm-up.
Compare models interleaved in one process (``measure_many``): two cores are easily contended.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from depthcut.devices import device_of
from depthcut.timing import CpuWatch, reliability, spread


@dataclass
class LatencyResult:
    """Medians of interleaved repeats; ``spread`` is each figure's (max − min) / median,
    ``other_cpu`` the CPU other processes used meanwhile (% of one core, None where the OS
    does not say), ``unreliable`` the reasons to distrust the figures (empty: none)."""

    prefill_ms: dict[int, float] = field(default_factory=dict)  # prompt length -> ms
    decode_tps: dict[int, float] = field(default_factory=dict)  # batch -> new tokens/s
    peak_rss_mb: float = 0.0
    threads: int = 1
    spread: dict[str, float] = field(default_factory=dict)  # "prefill 128" -> relative spread
    other_cpu: float | None = None
    unreliable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _ids(model, batch: int, length: int) -> torch.Tensor:
    vocab = int(model.config.vocab_size)
    ids = (torch.arange(batch * length).view(batch, length) * 31 + 7) % (vocab - 3) + 3
    return ids.to(device_of(model))


def _sync(ids: torch.Tensor) -> None:
    """GPU kernels run asynchronously: wait for them before reading the clock."""
    if ids.is_cuda:
        torch.cuda.synchronize(ids.device)


def prefill_ms(model, length: int, batch: int = 1) -> float:
    ids = _ids(model, batch, length)
    _sync(ids)
    start = time.perf_counter()
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    _sync(ids)
    return (time.perf_counter() - start) * 1000.0


def decode_tps(model, batch: int, new_tokens: int = 32, prompt: int = 16) -> float:
    """Greedy decode throughput (batch × new tokens / s), prefill excluded."""
    from transformers import DynamicCache

    ids = _ids(model, batch, prompt)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        _sync(ids)
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
        _sync(ids)
    return batch * new_tokens / (time.perf_counter() - start)


def measure_many(
    models: dict[str, torch.nn.Module],
    lengths: tuple[int, ...] = (128, 512),
    batches: tuple[int, ...] = (1, 8),
    new_tokens: int = 32,
    repeats: int = 3,
    threads: int = 2,
) -> dict[str, LatencyResult]:
    """Measure several models interleaved (A, B, A, B, ...) and report medians, each with its
    spread, and whether other processes' CPU use or the spread makes them unreliable."""
    torch.set_num_threads(threads)
    samples: dict[str, dict[tuple, list[float]]] = {k: {} for k in models}
    for model in models.values():  # warm-up
        prefill_ms(model, min(lengths))
        decode_tps(model, 1, 4)
    watch = CpuWatch()
    watch.start()
    for _ in range(repeats):
        for name, model in models.items():
            for length in lengths:
                samples[name].setdefault(("p", length), []).append(prefill_ms(model, length))
            for batch in batches:
                tps = decode_tps(model, batch, new_tokens)
                samples[name].setdefault(("d", batch), []).append(tps)
    other_cpu = watch.stop()
    return {name: _result(got, threads, other_cpu) for name, got in samples.items()}


def _result(got: dict[tuple, list[float]], threads: int, other_cpu: float | None):
    res = LatencyResult(threads=threads, peak_rss_mb=peak_rss_mb(), other_cpu=other_cpu)
    for (kind, key), values in got.items():
        target = res.prefill_ms if kind == "p" else res.decode_tps
        target[key] = statistics.median(values)
        label = f"prefill {key}" if kind == "p" else f"decode b{key}"
        res.spread[label] = spread(values)
    res.unreliable = reliability(res.spread, other_cpu)
    return res
