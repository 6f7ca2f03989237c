"""Data-parallel scoring on torch.distributed: N processes score N shares of the calibration
batches, and the per-unit results are combined exactly as one process would have computed them.

Start it with ``torchrun --nproc_per_node N -m depthcut.cli score …`` (or ``accelerate
launch``), or call ``torch.distributed.init_process_group`` before ``depthcut.score``: gloo on
the CPU, NCCL on GPUs. Every metric that depthcut averages over tokens is a ratio
``Σ values / Σ tokens`` whose token count does not depend on the unit, so each process's mean
times its token count is its sum, and the all-reduced sums divided by the all-reduced counts
are the single-process scores. Sums (width Taylor) are all-reduced as they are. ``ppl`` (the
exponential of a mean), fine units (per-channel gradient statistics drive reconciliation) and
the iterative strategy (each greedy step needs the reduced scores) are refused.
"""

from __future__ import annotations

import os

import torch

from depthcut.config import PruneConfig
from depthcut.data import CalibData
from depthcut.errors import ConfigError
from depthcut.importance import functional as F
from depthcut.scores import Scores

WEIGHTED = ("angular", "bi", "gromov", "kl", "ce", "random")  # token means (random: constant)
WIDTH_SUMS = ("taylor",)
WIDTH_MEANS = ("output_norm", "activation_frequency")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> None:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe (WORLD_SIZE,
    RANK, MASTER_ADDR…), gloo on the CPU and NCCL with CUDA; nothing for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and world()[1] == 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)


def check_supported(cfg: PruneConfig) -> None:
    if world()[1] == 1:
        return
    if "fine" in cfg.units or cfg.strategy == "iterative" or cfg.width_steps > 1:
        raise ConfigError(
            "data-parallel scoring covers one-shot depth and width scores; run fine units "
            "and iterative strategies in one process"
        )
    if cfg.depth_units and cfg.importance not in WEIGHTED:
        raise ConfigError(f"importance {cfg.importance!r} cannot be combined across processes")


def shard(calib: CalibData) -> CalibData:
    """This process's share of the calibration batches (batches rank, rank + N, …): whole
    batches, so that per-batch quantities (the gradient of a batch's mean loss, for Taylor)
    are the single-process ones."""
    rank, size = world()
    if size == 1:
        return calib
    starts = range(0, len(calib), calib.batch_size)
    if len(starts) < size:
        raise ConfigError(f"{len(starts)} calibration batches cannot feed {size} processes")
    rows = [r for b in starts[rank::size] for r in range(b, min(b + calib.batch_size, len(calib)))]
    index = torch.tensor(rows, dtype=torch.long)
    return CalibData(calib.input_ids[index], calib.attention_mask[index], calib.batch_size)


def _all_reduce(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def _token_count(calib: CalibData, cfg: PruneConfig) -> int:
    """The tokens the depth metric of ``cfg`` averages over on ``calib``."""
    if cfg.importance == "ce":
        return int(F.target_mask(calib.input_ids, calib.attention_mask, cfg.tokens).sum())
    return int(F.token_mask(calib.attention_mask, cfg.tokens).sum())


def _weighted(values: dict[str, float], weight: int) -> dict[str, float]:
    keys = sorted(values)
    reduced = _all_reduce([values[k] * weight for k in keys] + [float(weight)])
    return {k: v / reduced[-1] for k, v in zip(keys, reduced, strict=False)}


def _reduce_width(width: dict, tokens: int) -> None:
    for data in width.values():
        if data["metric"] in WIDTH_SUMS + WIDTH_MEANS:
            keys = sorted(data["scores"])
            flat = [v for k in keys for v in data["scores"][k]]
            weight = 1 if data["metric"] in WIDTH_SUMS else tokens
            reduced = _all_reduce([v * weight for v in flat] + [float(weight)])
            scale = 1.0 if data["metric"] in WIDTH_SUMS else reduced[-1]
            at = 0
            for k in keys:
                n = len(data["scores"][k])
                data["scores"][k] = [v / scale for v in reduced[at : at + n]]
                at += n


def reduce_scores(scores: Scores, cfg: PruneConfig, calib: CalibData) -> None:
    """Combine this process's scores (made on ``calib``, its shard) with the others'."""
    if world()[1] == 1:
        return
    if scores.unit_scores:
        scores.unit_scores = _weighted(scores.unit_scores, _token_count(calib, cfg))
    if scores.spans:
        scores.spans = _weighted(scores.spans, _token_count(calib, cfg))
    if scores.width:
        _reduce_width(scores.width, int(calib.attention_mask.sum()))
    scores.cost["processes"] = world()[1]
