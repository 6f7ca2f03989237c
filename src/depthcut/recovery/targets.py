"""Sparse distillation targets: the teacher's ``k`` most likely next tokens and the log-mass
of all the others, per position of every training window, computed once (from the teacher in
memory, or streamed block by block from its checkpoint when it does not fit) and stored in a
safetensors file that the KD loss reads instead of a live teacher.

The file records what it was computed for: the tokenizer, the token windows, ``k``. A file
computed for anything else is refused, naming the difference."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from depthcut.data import CalibData
from depthcut.errors import ConfigError

FORMAT = "depthcut-teacher-topk/1"


@dataclass
class TeacherTargets:
    """Per position of every window: ``indices`` [N, T, k] (int32) and ``logprobs``
    [N, T, k] (float16) of the teacher's top-k tokens, ``tail`` [N, T] (float32) the log of
    the probability mass outside them; ``meta`` what they were computed for."""

    indices: torch.Tensor
    logprobs: torch.Tensor
    tail: torch.Tensor
    meta: dict

    @property
    def k(self) -> int:
        return int(self.indices.shape[-1])

    def rows(self, index: torch.Tensor, device) -> tuple[torch.Tensor, ...]:
        """(indices, logprobs, tail) of the windows ``index``, on ``device``."""
        index = index.cpu()
        return tuple(
            t[index].to(device) for t in (self.indices.long(), self.logprobs.float(), self.tail)
        )

    def bytes_per_token(self) -> float:
        total = sum(t.numel() * t.element_size() for t in (self.indices, self.logprobs, self.tail))
        return total / self.tail.numel()

    def save(self, path: str | Path) -> Path:
        """Write the targets atomically (a finished file or none)."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
        tensors = {"indices": self.indices, "logprobs": self.logprobs, "tail": self.tail}
        save_file(tensors, str(tmp), metadata={"depthcut": json.dumps(self.meta)})
        tmp.replace(path)
        return path


def fingerprint(tokenizer, data: CalibData, k: int) -> dict:
    """What stored targets depend on: the tokenizer's vocabulary, the token windows, k."""
    return {
        "format": FORMAT,
        "k": k,
        "tokenizer": _tokenizer_hash(tokenizer),
        "tokens": _digest(data.input_ids.to(torch.int64).numpy().tobytes()),
        "windows": list(data.input_ids.shape),
    }


def load_targets(path: str | Path, expected: dict) -> TeacherTargets:
    """The targets stored at ``path``; refused (ConfigError) when computed for another
    tokenizer, other windows or another k than ``expected``."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("depthcut", "{}"))
        check_fingerprint(path, meta, expected)
        return TeacherTargets(
            f.get_tensor("indices"), f.get_tensor("logprobs"), f.get_tensor("tail"), meta
        )


def check_fingerprint(path, found: dict, expected: dict) -> None:
    """One line naming the first difference between stored and expected fingerprints."""
    what = {
        "format": "is not a depthcut teacher-targets file",
        "tokenizer": "were computed with another tokenizer",
        "windows": "were computed for another number or length of training windows",
        "tokens": "were computed on another calibration text",
        "k": f"hold top-{found.get('k')} tokens, not top-{expected.get('k')}",
    }
    for key, reason in what.items():
        if found.get(key) != expected.get(key) and expected.get(key) is not None:
            raise ConfigError(
                f"teacher targets {path} {reason}: delete the file or pass another "
                "--teacher-targets path (they are recomputed)"
            )


def top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices, log-probabilities, tail log-mass) of the ``k`` most likely tokens of each
    position of ``logits`` [..., V]; the tail is the exact log-sum-exp of the others."""
    logp = F.log_softmax(logits.float(), dim=-1)
    values, indices = logp.topk(k, dim=-1)
    rest = logp.scatter(-1, indices, float("-inf"))
    return indices, values, torch.logsumexp(rest, dim=-1)


def compute_targets(
    teacher: nn.Module, data: CalibData, k: int, meta: dict, progress: bool = True
) -> TeacherTargets:
    """The top-``k`` targets of ``teacher`` (in memory) on every window of ``data``."""
    from depthcut.devices import device_of

    device = device_of(teacher)

    def logits() -> Iterator[torch.Tensor]:
        with torch.no_grad():
            for batch in data.to(device).batches():
                yield teacher(**batch, use_cache=False).logits

    return _collect(logits(), k, meta, _bar(data, progress))


def stream_targets(
    folder: str | Path, data: CalibData, k: int, meta: dict, progress: bool = True
) -> TeacherTargets:
    """The top-``k`` targets of the teacher checkpoint in ``folder``, one block in memory at a
    time (depthcut's streaming engine): for teachers that do not fit beside the student."""
    from depthcut.stream.score import StreamCache
    from depthcut.stream.source import BlockSource

    source = BlockSource(folder)
    cache = StreamCache(source, data, progress, keep=False)
    blocks = range(source.structure.num_blocks)
    for i in tqdm(source.walk(blocks), total=len(blocks), desc="teacher", disable=not progress):
        cache.advance(i)
    source.load_head()
    outputs = (cache.logits(hidden) for hidden in cache.inputs[-1])
    return _collect(outputs, k, meta, _bar(data, progress))


def _collect(logits: Iterable[torch.Tensor], k: int, meta: dict, bar) -> TeacherTargets:
    parts: list[tuple[torch.Tensor, ...]] = []
    for batch_logits in logits:
        idx, lp, tail = top_k(batch_logits, k)
        parts.append((idx.to(torch.int32).cpu(), lp.half().cpu(), tail.cpu()))
        bar.update(batch_logits.shape[0])
    bar.close()
    indices, logprobs, tail = (torch.cat(p) for p in zip(*parts))
    return TeacherTargets(indices, logprobs, tail, meta)


def _bar(data: CalibData, progress: bool):
    return tqdm(total=len(data), desc="teacher top-k", unit="window", disable=not progress)


def _tokenizer_hash(tokenizer) -> str | None:
    if tokenizer is None:
        return None
    vocab = sorted(tokenizer.get_vocab().items())
    return _digest(json.dumps(vocab).encode())


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
