"""Greedy generations on fixed prompts, and a repetition-loop detector.

Pruned models can look fine by perplexity and still loop ("the the the …", or a sentence
repeated). The detector measures the share of repeated word n-grams in a continuation: the
fraction of its n-grams that already occurred earlier in the same continuation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from depthcut.devices import device_of

PROMPTS = (
    "The history of the city begins",
    "In mathematics, a prime number is",
    "The river flows through",
    "Scientists study the climate because",
)
LOOP_THRESHOLD = 0.3  # share of repeated 4-grams above which a text counts as looping


def repeated_ngram_share(text: str, n: int = 4) -> float:
    """Fraction of the word n-grams of ``text`` that occurred before in ``text`` (0 = none)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)


def is_looping(text: str, n: int = 4, threshold: float = LOOP_THRESHOLD) -> bool:
    return repeated_ngram_share(text, n) > threshold


@dataclass(frozen=True)
class Sample:
    prompt: str
    continuation: str
    repeated_4gram_share: float
    looping: bool

    def to_dict(self) -> dict:
        return asdict(self)


def generate_samples(
    model, tokenizer, prompts: tuple[str, ...] = PROMPTS, new_tokens: int = 48
) -> list[Sample]:
    """Greedy continuations (KV cache on) of each prompt, with their repetition share."""
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device_of(model))
        with torch.no_grad():
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        text = tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
        share = repeated_ngram_share(text)
        out.append(Sample(prompt, text, share, share > LOOP_THRESHOLD))
    return out
