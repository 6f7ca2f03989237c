"""Evaluate one model, or a base and a pruned model side by side (latency interleaved)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from depthcut.data import evaluation_tokens
from depthcut.eval.latency import measure_many
from depthcut.eval.perplexity import perplexity
from depthcut.graph.structure import discover_structure
from depthcut.units.discover import count_params, embedding_params


@dataclass(frozen=True)
class EvalSettings:
    perplexity: bool = True
    latency: bool = False
    source: str = "wiki"
    window: int = 512
    stride: int = 512
    bos: bool | None = None  # None: BOS where the tokenizer puts one first (data.expects_bos)
    max_windows: int = 8
    lengths: tuple[int, ...] = (128, 512)
    batches: tuple[int, ...] = (1, 8)
    new_tokens: int = 32
    repeats: int = 3
    threads: int = 2
    tasks: tuple[str, ...] = ()  # zero-shot tasks through lm-eval (depthcut.eval.zeroshot)
    task_limit: int | None = None

    def bos_id(self, tokenizer) -> int | None:
        """The BOS id every evaluation window starts with, or None."""
        from depthcut.data import expects_bos

        use = expects_bos(tokenizer) if self.bos is None else self.bos
        return tokenizer.bos_token_id if use else None


def param_counts(model: nn.Module) -> dict[str, int]:
    total = count_params(model)
    return {
        "params_all": total,
        "params_non_embedding": total - embedding_params(model, discover_structure(model)),
    }


def evaluate_models(
    models: dict[str, nn.Module], tokenizer, settings: EvalSettings, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """{name: {params_*, perplexity?, latency?}} for every model, measured the same way."""
    results: dict[str, dict[str, Any]] = {n: dict(param_counts(m)) for n, m in models.items()}
    if settings.perplexity:
        measure = perplexity_result_fn(tokenizer, settings, progress)
        for name, model in models.items():
            results[name]["perplexity"] = measure(model).to_dict()
    if settings.tasks:
        from depthcut.eval.zeroshot import zeroshot

        for name, model in models.items():
            results[name]["zeroshot"] = zeroshot(
                model, tokenizer, list(settings.tasks), settings.task_limit
            )
    if settings.latency:
        lat = measure_many(
            models,
            settings.lengths,
            settings.batches,
            settings.new_tokens,
            settings.repeats,
            settings.threads,
        )
        for name, res in lat.items():
            results[name]["latency"] = res.to_dict()
    return results


def perplexity_result_fn(tokenizer, settings: EvalSettings, progress: bool = False):
    """model -> PerplexityResult under ``settings`` (held-out tokens prepared once)."""
    ids = evaluation_tokens(tokenizer, settings.source, settings.window * settings.max_windows + 1)
    bos = settings.bos_id(tokenizer)

    def measure(model):
        return perplexity(
            model, ids, settings.window, settings.stride, bos, settings.max_windows, progress
        )

    return measure


def perplexity_fn(tokenizer, settings: EvalSettings, progress: bool = False):
    """model -> perplexity (a float) under ``settings``."""
    measure = perplexity_result_fn(tokenizer, settings, progress)
    return lambda model: measure(model).perplexity
