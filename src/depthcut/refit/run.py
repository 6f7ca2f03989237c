"""``repair(model, plan, calib)``: refit kept weights so the pruned model stays close to the
dense one, in place and before the plan is applied; never worse on held-back calibration text.

Order: width consumers first (their refit zeroes the removed channels, so the unsliced model
computes what the sliced one will), then the depth runs on those activations, then the writers
of blocks edited by fine-grained units (``refit.fine``). The calibration
batches are split: even batches fit, odd batches check (next-token loss); a refit that does not
lower the check loss is undone. Cost is reported in forward-equivalents of the whole set.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from depthcut.config import REPAIRS
from depthcut.data import CalibData, sequences
from depthcut.errors import ConfigError
from depthcut.graph.structure import ModelStructure, discover_structure
from depthcut.importance import functional as F
from depthcut.ops import out_features
from depthcut.paths import scratch_dir
from depthcut.planning.plan import Plan
from depthcut.refit.fine import repair_fine
from depthcut.refit.ls import (
    repair_depth,
    require_tokens,
    runs,
    split,
    writer_module,
)
from depthcut.refit.patch import repair_patch
from depthcut.refit.width import Candidates, consumers, fit_candidates

RIDGES = (1e-2, 1e-1)  # width candidates, chosen on the check batches (pulls towards W)


def halves(calib: CalibData) -> tuple[CalibData, CalibData]:
    """(fit, check) as calibration sets: the batches ``ls.split`` gives the depth fits."""
    batches = calib.batches()

    def join(part: range) -> CalibData:
        ids = torch.cat([batches[b]["input_ids"] for b in part])
        mask = torch.cat([batches[b]["attention_mask"] for b in part])
        return CalibData(ids, mask, calib.batch_size)

    fit, check = split(len(batches))
    return join(fit), join(check)


def _require_tokens(fit: CalibData, unknowns: int) -> None:
    require_tokens(int(fit.attention_mask.sum()), unknowns)


def _rows(calib: CalibData):
    """Every calibration sequence as a batch of its own (``data.sequences``)."""
    for batch in calib.batches():
        yield from sequences(batch)


@torch.no_grad()
def model_nll(model: nn.Module, calib: CalibData, bar: tqdm | None = None) -> float:
    """Mean next-token loss of ``model`` over the real tokens of ``calib`` (``bar`` advanced
    by one a sequence)."""
    rows = _rows(calib) if bar is None else _counted(_rows(calib), bar)
    return F.mean_nll((model(**b, use_cache=False).logits, b) for b in rows)


def _counted(items: Iterator, bar: tqdm) -> Iterator:
    for item in items:
        yield item
        bar.update()


@torch.no_grad()
def _repair_width(model, structure, plan, fit, check, progress) -> dict:
    keep = consumers(model, structure, plan)
    if not keep:
        return {"layers": 0, "forward_equivalents": 0.0}
    _require_tokens(fit, max(len(c) for c in keep.values()))
    losses = {}
    with scratch_dir("refit") as folder:
        store = Candidates(folder, keep)
        fit_candidates(model, structure, store, fit, RIDGES, progress)
        total = (len(RIDGES) + 1) * len(check)  # one forward a check sequence a candidate
        with tqdm(total=total, desc="repair: choose ridge", disable=not progress) as bar:
            for ridge in (None, *RIDGES):
                store.load_into(model, ridge)
                losses[ridge] = model_nll(model, check, bar)
        best = min(losses, key=lambda r: losses[r])
        store.load_into(model, best)
    n_fit, n_check = len(fit), len(check)
    return {
        "layers": len(keep),
        "ridge": best,
        "kept": best is not None,
        "check_nll": {str(k): v for k, v in losses.items()},
        "forward_equivalents": (n_fit + len(losses) * n_check) / (n_fit + n_check),
    }


def repair(
    model: nn.Module, plan: Plan, calib: CalibData, method: str = "ls", progress: bool = True
) -> dict:
    """Refit ``model`` in place for ``plan`` (call before ``apply``); returns what was fitted,
    the check losses and the cost in forward-equivalents. ``method="none"`` or an empty plan
    changes nothing.

    >>> report = repair(model, plan, calib)  # doctest: +SKIP
    >>> pruned = apply(model, plan, inplace=True)  # doctest: +SKIP
    """
    if method not in REPAIRS:
        raise ConfigError(f"--repair {method!r} unknown; choose one of {', '.join(REPAIRS)}")
    if method == "none" or not plan.actions:
        return {"method": "none"}
    started = time.perf_counter()
    model.eval()
    require_lm_head(model, method)
    structure = discover_structure(model)
    if method == "patch":
        report = repair_patch(model, structure, plan, calib, progress)
        return report | {"seconds": time.perf_counter() - started}
    fit, check = halves(calib)
    width = _repair_width(model, structure, plan, fit, check, progress)
    depth = _repair_runs(model, structure, plan, calib, fit, progress)
    fine = repair_fine(model, structure, plan, calib, progress)
    parts = (width, depth, fine)
    return {
        "method": method,
        "width": width,
        "depth": depth,
        "fine": fine,
        "forward_equivalents": sum(p["forward_equivalents"] for p in parts),
        "seconds": time.perf_counter() - started,
    }


def require_lm_head(model: nn.Module, method: str) -> None:
    """The refits are kept only when the held-back next-token loss drops: refuse, before any
    work, a model that has no language-model head (an encoder)."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is None:
        raise ConfigError(
            f"--repair {method} keeps a fit only when the held-back next-token loss drops, and "
            f"this model ({type(model).__name__}) has no language-model head: use --repair none"
        )


def _repair_runs(model, structure: ModelStructure, plan: Plan, calib, fit, progress) -> dict:
    fits = runs(plan, structure)
    writers = [writer_module(model, structure, r.writer) for r in fits if r.writer]
    if writers:
        _require_tokens(fit, max(out_features(m) for m in writers))
    return repair_depth(model, structure, fits, calib, progress=progress)
