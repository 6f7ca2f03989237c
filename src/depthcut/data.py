"""Calibration and evaluation text.

The packaged source is real English Wikipedia text shipped inside the ``exllamav2==0.3.2``
wheel (``standard_cal_data/wiki.utf8``, 2 MB). The wheel file is fetched once from the
configured package index (never installed, nothing resolved) into depthcut's cache. Articles
are split by position: the first 80% are calibration text, the last 20% evaluation text, so the
two never overlap.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from depthcut.errors import CalibrationError
from depthcut.paths import FetchError, fetch_file

WHEEL_PROJECT = "exllamav2"
WHEEL_FILE = "exllamav2-0.3.2-py3-none-any.whl"
MEMBER = "exllamav2/conversion/standard_cal_data/{name}.utf8"
SOURCES = ("wiki", "c4", "code", "technical", "tiny")
CALIB_SHARE = 0.8


def sequences(batch: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """Each sequence of ``batch`` as a batch of its own (one sequence's logits alive at a
    time: 4 × 256 tokens × a 152k vocabulary are 0.6 GB of float32)."""
    for r in range(batch["input_ids"].shape[0]):
        yield {k: v[r : r + 1] for k, v in batch.items()}


@dataclass
class CalibData:
    """Token batches: ``input_ids`` and ``attention_mask`` of shape [N, T]; 0 marks padding."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    batch_size: int = 4

    @classmethod
    def of(cls, batch: dict[str, torch.Tensor]) -> CalibData:
        """One batch (``input_ids`` and ``attention_mask``) as calibration data."""
        return cls(batch["input_ids"], batch["attention_mask"])

    def __post_init__(self) -> None:
        if self.input_ids.numel() == 0 or int(self.attention_mask.sum()) == 0:
            raise CalibrationError("calibration data is empty: no tokens to calibrate on")
        if self.input_ids.shape != self.attention_mask.shape:
            raise CalibrationError("input_ids and attention_mask shapes differ")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device) -> CalibData:
        """The same batches with their tensors on ``device``."""
        ids, mask = self.input_ids.to(device), self.attention_mask.to(device)
        return CalibData(ids, mask, self.batch_size)

    def batches(self) -> list[dict[str, torch.Tensor]]:
        out = []
        for start in range(0, len(self), self.batch_size):
            sl = slice(start, start + self.batch_size)
            out.append({"input_ids": self.input_ids[sl], "attention_mask": self.attention_mask[sl]})
        return out


def copying_windows(windows: CalibData) -> CalibData:
    """Each window as an in-context copying probe, of the same width: its first real token,
    then the next half of its real tokens twice, padding after. The dense model predicts the
    repeated half almost exactly by attending back to the first; a pruned model that lost
    that ability (many attention sublayers removed) is seen there."""
    ids, mask = torch.zeros_like(windows.input_ids), torch.zeros_like(windows.attention_mask)
    for r in range(len(windows)):
        real = windows.input_ids[r][windows.attention_mask[r].bool()]
        body = real[1 : 1 + (len(real) - 1) // 2]
        row = torch.cat([real[:1], body, body])
        ids[r, : len(row)], mask[r, : len(row)] = row, 1
    return CalibData(ids, mask, windows.batch_size)


def with_copies(windows: CalibData) -> CalibData:
    """``windows`` followed by their ``copying_windows``: text and copying weigh alike."""
    copies = copying_windows(windows)
    return CalibData(
        torch.cat([windows.input_ids, copies.input_ids]),
        torch.cat([windows.attention_mask, copies.attention_mask]),
        windows.batch_size,
    )


def _wheel_path() -> Path:
    try:
        return fetch_file(WHEEL_PROJECT, WHEEL_FILE)
    except FetchError as err:
        raise CalibrationError(str(err)) from None


def packaged_text(name: str = "wiki") -> str:
    """The whole text of one packaged calibration source."""
    if name not in SOURCES:
        raise CalibrationError(
            f"unknown text source {name!r}; choose from {SOURCES} or a file path"
        )
    with zipfile.ZipFile(_wheel_path()) as wheel:
        return wheel.read(MEMBER.format(name=name)).decode("utf-8")


def split_articles(text: str) -> list[str]:
    """Wikipedia-style ``<doc ...>`` articles, else blank-line separated paragraphs, else
    lines (the packaged ``c4`` source has one web page per line and no blank line)."""
    docs = re.findall(r"<doc[^>]*>(.*?)</doc>", text, flags=re.S)
    if not docs:
        docs = re.split(r"\n\s*\n", text)
    if len([d for d in docs if d.strip()]) < 2:
        docs = text.splitlines()
    return [d.strip() for d in docs if d.strip()]


def text_split(source: str = "wiki", split: str = "calibration") -> str:
    """Calibration or evaluation part of a source (packaged name or a local text file)."""
    return "\n\n".join(split_source(source, split))


def split_source(source: str = "wiki", split: str = "calibration") -> list[str]:
    """The articles of the calibration (first 80%) or evaluation (last 20%) part."""
    path = Path(source)
    if path.exists():
        text = path.read_text(encoding="utf-8")
    elif source in SOURCES:
        text = packaged_text(source)
    else:
        raise CalibrationError(f"text source {source!r} is neither a file nor one of {SOURCES}")
    articles = split_articles(text)
    if len(articles) < 2:
        raise CalibrationError(f"text source {source!r} has fewer than 2 articles to split")
    cut = max(1, int(len(articles) * CALIB_SHARE))
    return articles[:cut] if split == "calibration" else articles[cut:]


def recovery_texts(source: str = "wiki", val_share: float = 0.1) -> tuple[str, str]:
    """(training, validation) text for recovery: the calibration articles split by position,
    so neither overlaps the evaluation articles that perplexity is measured on."""
    articles = split_source(source, "calibration")
    if len(articles) < 2:
        raise CalibrationError(f"text source {source!r} has too few articles to train on")
    cut = min(len(articles) - 1, max(1, int(len(articles) * (1 - val_share))))
    return "\n\n".join(articles[:cut]), "\n\n".join(articles[cut:])


def pack_tokens(
    ids: list[int], n_samples: int, seq_len: int, batch_size: int, bos_id: int | None = None
) -> CalibData:
    """Consecutive windows of ``seq_len`` tokens (no padding needed); with ``bos_id`` each
    window is BOS + ``seq_len - 1`` text tokens (models such as Gemma expect it)."""
    body = seq_len - (bos_id is not None)
    n = min(n_samples, len(ids) // body)
    if n == 0:
        raise CalibrationError(f"calibration text has {len(ids)} tokens, fewer than {body}")
    tensor = torch.tensor(ids[: n * body], dtype=torch.long).view(n, body)
    if bos_id is not None:
        tensor = torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), tensor], dim=1)
    return CalibData(tensor, torch.ones_like(tensor), batch_size)


def from_texts(tokenizer, texts: list[str], seq_len: int, batch_size: int = 4) -> CalibData:
    """One row per text, right-padded to the longest (mask 0 on padding)."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise CalibrationError("calibration data is empty: no non-blank texts")
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][:seq_len] for t in texts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return CalibData(ids, mask, batch_size)


def expects_bos(tokenizer) -> bool:
    """Whether the tokenizer starts every encoded text with its BOS token (Gemma's does: its
    model expects one; SmolLM2's and Qwen2's do not). Calibration and evaluation windows then
    start with BOS by default, as the model sees text in use (Gemma3-270M's perplexity on the
    same windows is 17.25 with BOS, 38.7 without)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def calibration(
    tokenizer,
    source: str = "wiki",
    n_samples: int = 16,
    seq_len: int = 256,
    batch_size: int = 4,
    bos: bool = False,
) -> CalibData:
    """``n_samples`` windows of ``seq_len`` tokens of calibration text (never evaluation text);
    ``bos``: each window starts with the tokenizer's BOS token (as evaluation's ``--bos``).

    >>> calib = calibration(tok, "wiki", n_samples=8, seq_len=128)  # doctest: +SKIP
    """
    if n_samples <= 0 or seq_len <= 1:
        raise CalibrationError(f"n_samples={n_samples}, seq_len={seq_len} must be positive")
    bos_id = tokenizer.bos_token_id if bos else None
    if bos and bos_id is None:
        raise CalibrationError("bos=True but the tokenizer has no BOS token")
    ids = tokenize_until(tokenizer, text_split(source, "calibration"), n_samples * seq_len)
    return pack_tokens(ids, n_samples, seq_len, batch_size, bos_id)


def tokenize_until(tokenizer, text: str, max_tokens: int) -> list[int]:
    """Tokenize paragraph by paragraph until ``max_tokens`` tokens are there."""
    ids: list[int] = []
    for article in text.split("\n\n"):
        ids += tokenizer(article + "\n\n", add_special_tokens=False)["input_ids"]
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]


def evaluation_tokens(tokenizer, source: str = "wiki", max_tokens: int = 8192) -> list[int]:
    """Up to ``max_tokens`` tokens of held-out evaluation text (never calibration text)."""
    ids = tokenize_until(tokenizer, text_split(source, "evaluation"), max_tokens)
    if not ids:
        raise CalibrationError(f"evaluation text from {source!r} is empty")
    return ids
