"""The option table: every block's options with their measured costs, saved as JSON.

Built once per model and calibration set (``build_table``: one rolling walk for the quality
costs, one latency measurement), then solved for any number of budgets.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from depthcut.calibrate import RollingCache
from depthcut.data import CalibData
from depthcut.errors import ConfigError
from depthcut.graph.structure import ModelStructure, discover_structure
from depthcut.kinds import Kind
from depthcut.methods.base import describe
from depthcut.methods.width.layers import WidthLayer, width_layers
from depthcut.methods.width.repaired import GramHooks
from depthcut.planning.plan import Action
from depthcut.refit.ls import maximal_runs, slots_of, writes_through_one_linear
from depthcut.search.cost import kv_bytes, option_seconds
from depthcut.search.options import Option, block_options, levels
from depthcut.search.probe import Probe
from depthcut.search.quality import DepthHooks, width_levels
from depthcut.search.runs import RunHooks, RunStart
from depthcut.search.runtime import TORCH, Runtime, runtime_name
from depthcut.units.discover import discover_units

TABLE_VERSION = 1
PRICINGS = ("model", "block")  # a narrower level's KL per unit of stream error: the model's or
# its block's (``OptionTable.quality``)
PROBE_BATCHES = 1  # calibration batches the probe measures removals' KL on
SUBLAYERS = {"attention": Kind.HEAD, "mlp": Kind.NEURON}


@dataclass
class OptionTable:
    """Per block (``blocks[i]``): sizes, paths, unit parameters, and for each sublayer level
    its quality cost and removed units; ``latency``: the measured decode table (with the
    prefill table under ``"prefill"``)."""

    model: dict[str, Any]
    blocks: list[dict[str, Any]]
    latency: dict[str, Any]
    cost: dict[str, Any] = field(default_factory=dict)
    version: int = TABLE_VERSION
    pricing: str = "model"  # how narrower levels are priced; a choice of the solve, not saved
    protect: tuple[int, int] = (0, 0)  # blocks at each end that only keep (not saved either)
    narrowing: float = 1.0  # measured ÷ predicted cost of narrower levels (``search``; not saved)

    def __post_init__(self) -> None:
        if self.pricing not in PRICINGS:
            raise ConfigError(f"pricing {self.pricing!r}: choose one of {', '.join(PRICINGS)}")

    def options(self, i: int) -> list[Option]:
        """Block ``i``'s options, ``keep`` first (only ``keep`` in a protected block)."""
        b = self.blocks[i]
        kept = (_kept_levels(b["attention"]), _kept_levels(b["mlp"]))
        found = block_options(i, b["attention"]["size"], b["mlp"]["size"], kept)
        found = [o for o in found if not _refused(b, o)]
        first, last = self.protect
        return found[:1] if i < first or i >= len(self.blocks) - last else found

    def left_out(self) -> list[str]:
        """One line per kind of removal the table leaves out, with its blocks and why."""
        found: dict[str, list[int]] = {}
        for i, b in enumerate(self.blocks):
            for removal in b.get("refused", {}):
                found.setdefault(removal, []).append(i)
        return [
            f"{removal} removal left out in blocks {', '.join(map(str, blocks))}: the sublayer "
            "before it writes into the residual stream through a norm, which --repair ls "
            "cannot fold into"
            for removal, blocks in found.items()
        ]

    def runs(self, i: int) -> list[Option]:
        """Block i's place in every run of blocks the table priced that covers it and no
        protected block (a run's first block carries its cost)."""
        first, last = self.protect
        kv, mlp = self.blocks[i]["attention"]["size"], self.blocks[i]["mlp"]["size"]
        out = []
        for start in range(max(first, i - self.longest_run + 1), i + 1):
            for length in self.blocks[start].get("runs", {}):
                end = start + length - 1
                if end >= i and end < len(self.blocks) - last:
                    out.append(Option(i, 0, 0, kv, mlp, run=(start, length)))
        return out

    @cached_property
    def longest_run(self) -> int:
        return max((n for b in self.blocks for n in b.get("runs", {})), default=1)

    def quality(self, o: Option) -> float:
        """The option's cost: the probe's KL where the table has it, else its stream error.

        A removal costs its probed KL. A narrower sublayer costs its stream error times a KL
        per unit of stream error: under ``pricing="model"`` (the default) the ratio of the
        sums over the removals of that sublayer in the blocks the search may change (not the
        protected ones), under ``"block"`` its own removal's (KL ÷ error); never more than its
        removal."""
        b = self.blocks[o.block]
        if o.run is not None:
            return self._run_cost(o, "kl")
        if "kl" not in b:
            return self.stream_error(o)
        if o.removes_block:
            return b["kl"]["block"]
        return self._priced(b, "attention", o.attention) + self._priced(b, "mlp", o.mlp)

    def _priced(self, block: dict, sub: str, kept: int) -> float:
        info, kl = block[sub], block["kl"][sub]
        if kept == info["size"]:
            return 0.0
        removed = info["levels"][0]["error"]
        if kept == 0 or removed <= 0:
            return kl
        rate = kl / removed if self.pricing == "block" else self._model_rates[sub]
        return min(self.narrowing * rate * info["levels"][kept]["error"], kl)

    def _run_cost(self, o: Option, key: str) -> float:
        """A run member's ``key`` ("kl" or "error"): the run's, carried by its first block."""
        assert o.run is not None
        start, length = o.run
        return self.blocks[start]["runs"][length][key] if o.block == start else 0.0

    def narrowed_cost(self, o: Option) -> float:
        """The part of ``quality(o)`` its narrower (not removed) sublayers cost."""
        b = self.blocks[o.block]
        if o.run is not None or o.removes_block or "kl" not in b:
            return 0.0
        parts = (("attention", o.attention), ("mlp", o.mlp))
        return sum(self._priced(b, sub, kept) for sub, kept in parts if kept)

    @cached_property
    def _model_rates(self) -> dict[str, float]:
        """{sublayer: Σ removal KL ÷ Σ removal stream error} over the blocks the search may
        change (every block when all are protected): a protected end block is often the
        outlier (block 0's removal errors are 10³–10⁴ times the others' on SmolLM2 and the
        1.5B) and would set the rate of every other block."""
        first, last = self.protect
        free = self.blocks[first : len(self.blocks) - last] or self.blocks
        return {sub: _rate(free, sub) for sub in SUBLAYERS}

    def priced(self, pricing: str) -> OptionTable:
        """The same table with narrower levels priced by ``pricing`` (one of ``PRICINGS``)."""
        return replace(self, pricing=pricing)

    def repriced(self, narrowing: float) -> OptionTable:
        """The same table with narrower levels' costs times ``narrowing`` (never more than
        their sublayer's removal)."""
        return replace(self, narrowing=narrowing)

    def protected(self, first: int, last: int) -> OptionTable:
        """The same table offering only ``keep`` in its first ``first`` and last ``last``
        blocks (``PruneConfig.protect_first`` / ``protect_last``)."""
        check_protect((first, last))
        return replace(self, protect=(first, last))

    def stream_error(self, o: Option) -> float:
        """The error the option adds to the residual stream, after its repair."""
        b = self.blocks[o.block]
        if o.run is not None:
            return self._run_cost(o, "error")
        if o.removes_block:
            return b["block"]["error"]
        return _level(b["attention"], o.attention)["error"] + _level(b["mlp"], o.mlp)["error"]

    def seconds(self, o: Option) -> float:
        """Predicted decode seconds per token of the option's block."""
        return _seconds(self.latency, o)

    @property
    def prefill(self) -> dict:
        """The measured prefill table (tables of this version; refused for older ones)."""
        if "prefill" not in self.latency:
            raise ConfigError(
                "--budget prefill: this option table has no prefill timings (made by an earlier "
                "version of depthcut): build it again"
            )
        return self.latency["prefill"]

    def prefill_seconds(self, o: Option) -> float:
        """Predicted prefill seconds of the option's block."""
        return _seconds(self.prefill, o)

    def kv(self, o: Option) -> int:
        return o.attention * self.blocks[o.block]["attention"]["bytes_per_unit"]

    def params(self, o: Option) -> int:
        """Parameters the option removes."""
        b = self.blocks[o.block]
        if o.removes_block:
            return b["block"]["params"]
        return _removed_params(b["attention"], o.attention) + _removed_params(b["mlp"], o.mlp)

    def actions(self, o: Option) -> list[Action]:
        """The plan actions that realise ``o`` (none for ``keep``)."""
        b = self.blocks[o.block]
        if o.removes_block:
            return [Action(Kind.BLOCK, o.block, b["block"]["path"], b["block"]["params"])]
        out = []
        for sub, kept in (("attention", o.attention), ("mlp", o.mlp)):
            info = b[sub]
            if kept == info["size"]:
                continue
            if kept == 0:
                out.append(Action(Kind(sub), o.block, info["path"], info["params"]))
                continue
            level = _level(info, kept)
            removed = tuple(level["removed"])
            params = len(removed) * info["unit_params"]
            out.append(Action(SUBLAYERS[sub], o.block, info["module"], params, members=removed))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model": self.model,
            "blocks": self.blocks,
            "latency": self.latency,
            "cost": self.cost,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> OptionTable:
        from depthcut.files import check_version, read_json

        data = read_json(path, "option table")
        check_version(data.get("version"), TABLE_VERSION, "option table")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptionTable:
        blocks = [_int_keys(b) for b in data["blocks"]]
        latency = _int_ratios(data["latency"])
        return cls(data["model"], blocks, latency, data.get("cost", {}), data["version"])


def _refused(block: dict, o: Option) -> bool:
    """Whether the option removes something the repair cannot fold (``refused`` removals)."""
    refused = block.get("refused", {})
    if o.removes_block:
        return "block" in refused
    return any(getattr(o, sub) == 0 and sub in refused for sub in SUBLAYERS)


def _seconds(latency: dict, o: Option) -> float:
    ratios = latency["ratios"]
    a = ratios["attention"][_key(ratios["attention"], o.attention)]
    m = ratios["mlp"][_key(ratios["mlp"], o.mlp)]
    return option_seconds(latency, o.block, a, m)


def _int_ratios(latency: dict) -> dict:
    out = dict(latency)
    out["ratios"] = {k: {int(n): v for n, v in r.items()} for k, r in latency["ratios"].items()}
    if "prefill" in latency:
        out["prefill"] = _int_ratios(latency["prefill"])
    return out


def _key(ratios: dict[int, float], kept: int) -> int:
    return kept if kept in ratios else min(ratios, key=lambda k: abs(k - kept))


def _level(info: dict, kept: int) -> dict:
    if kept == info["size"]:
        return {"error": 0.0, "removed": []}
    return info["levels"][kept]


def check_protect(protect: tuple[int, int]) -> None:
    """Refuse a negative count of protected blocks (before any work)."""
    if min(protect) < 0:
        raise ConfigError(f"protect {protect}: protect_first/protect_last must be >= 0")


def _rate(blocks: list[dict], sub: str) -> float:
    removable = [b for b in blocks if 0 in b[sub]["levels"]]
    kl = sum(b["kl"][sub] for b in removable)
    error = sum(b[sub]["levels"][0]["error"] for b in removable)
    return kl / error if error > 0 else 0.0


def _kept_levels(info: dict) -> list[int]:
    """A sublayer's levels in this table (a table keeps the levels it was built with)."""
    return [info["size"], *sorted(info["levels"], reverse=True)]


def _removed_params(info: dict, kept: int) -> int:
    if kept == 0:
        return info["params"]
    return (info["size"] - kept) * info["unit_params"]


def _int_keys(block: dict) -> dict:
    out = dict(block)
    for sub in ("attention", "mlp"):
        info = dict(block[sub])
        info["levels"] = {int(k): v for k, v in info["levels"].items()}
        out[sub] = info
    if "runs" in block:
        out["runs"] = {int(k): v for k, v in block["runs"].items()}
    return out


def build_table(
    model: nn.Module,
    calib: CalibData,
    progress: bool = True,
    latency: dict | None = None,
    probe: int = PROBE_BATCHES,
    runtime: Runtime = TORCH,
    probed: OptionTable | None = None,
    longest_run: int = 1,
) -> OptionTable:
    """Score every option of every block of ``model`` on ``calib`` and measure its costs
    (``latency``: a table measured before, to reuse; ``probe``: calibration batches the
    removals' KL is measured on, 0 for stream errors alone; ``runtime``: where the times are
    measured; ``probed``: a table of the same model, calibration and ``probe`` whose probe's
    KLs to reuse instead of probing again: they do not depend on the levels, and every
    removal's stream error is checked against it; ``longest_run``: also price removing 2 …
    that many consecutive blocks as one folded run, ``search.runs``; it needs the probe)."""
    started = time.perf_counter()
    model.eval()
    structure = discover_structure(model)
    info = describe(model, structure)
    if probed is not None:
        _check_donor(probed, info)
    widths = sublayer_widths(model, structure)
    run_probe = probed is None
    walk_args = (model, structure, widths, calib, progress, probe, run_probe, longest_run)
    blocks, walk = _quality(*walk_args)
    if probed is not None:
        _reuse_probe(blocks, probed)
    _add_sizes(model, structure, widths, blocks)
    _add_refusals(structure, blocks)
    if latency is None:
        latency = measured_latency(model, structure, widths, runtime)
    cost = {"forward_equivalents": walk, "seconds": time.perf_counter() - started}
    if probed is not None:
        cost["probe_reused"] = probed.cost
    return OptionTable(info, blocks, latency, cost)


def sublayer_widths(model: nn.Module, structure: ModelStructure) -> dict[str, list[WidthLayer]]:
    """{"attention": every block's KV-group layer, "mlp": every block's neuron layer}."""
    return {
        "attention": width_layers(model, structure, "head"),
        "mlp": width_layers(model, structure, "neuron"),
    }


def measured_latency(
    model: nn.Module,
    structure: ModelStructure,
    widths: dict[str, list[WidthLayer]] | None = None,
    runtime: Runtime = TORCH,
) -> dict:
    """The option table's decode and prefill timings of every block's options, measured by
    ``runtime`` (and named after it)."""
    widths = widths or sublayer_widths(model, structure)
    units = discover_units(model, structure, ("block", "attention", "mlp"))
    kept = {k: levels(v[0].size) for k, v in widths.items()}
    return runtime.latency_table(model, units, widths, kept) | {"runtime": runtime.name}


@torch.no_grad()
def _quality(
    model, structure, widths, calib, progress: bool, probe: int, run_probe: bool, longest: int
):
    """Per block: every level's quality cost and removed units, and (``run_probe``) the
    probe's KLs, with those of the runs of up to ``longest`` blocks that start there (one
    rolling walk, plus the probe's runs; the probed batches are kept out of the folds' fits
    either way)."""
    modules = dict(model.named_modules())
    cache = RollingCache(model, structure, calib, progress)
    probed = range(probe if len(cache.batches) > probe else 0)  # others fit the folds
    prober = Probe(model, structure, cache, probed) if probed and run_probe else None
    runs = RunHooks(model, structure, longest, probed) if prober and longest > 1 else None
    previous, full, blocks = None, None, []
    for i in tqdm(range(cache.num_blocks), desc="options", disable=not progress):
        layers = [widths["attention"][i], widths["mlp"][i]]
        grams = GramHooks(layers, cache.blocks, modules)
        depth = DepthHooks(model, structure, i, previous, probed)
        if prober:
            prober.hold(i, longest)
        if runs:
            runs.begin(i, previous, full if previous else None)
        try:
            cache.advance(i, before=_masking(cache, grams, depth, runs))
        finally:
            grams.remove()
            depth.remove()
            done = runs.end(i) if runs else []
        blocks.append(_block_entry(modules, layers, grams.grams, depth))
        if prober:
            blocks[-1]["kl"] = prober.measure(i, depth, full if previous else None)
            _add_runs(prober, blocks, done, i)
        previous = depth.written if all(w is not None for w in depth.written) else None
        full = depth.full
    return blocks, cache.forward_equivalents


def _add_runs(prober: Probe, blocks: list[dict], done: list[tuple[RunStart, int]], end: int):
    """The probed KL and stream error of each run that ends at block ``end``, at its start."""
    for start, length in done:
        found = start.transform(length)
        if found is None:
            continue
        t, error = found
        kl = prober.measure_run(start.block, end, t, start.full)
        entry = {"kl": kl, "error": error, "folded": t is not None}
        blocks[start.block].setdefault("runs", {})[length] = entry


def _masking(cache: RollingCache, grams: GramHooks, depth: DepthHooks, runs: RunHooks | None):
    """The ``before(b)`` of a walk step: every hook set learns batch b's real tokens."""

    def before(b: int) -> None:
        mask = cache.masks(b).bool()
        grams.state.update(mask=mask)
        depth.state = {"mask": mask, "batch": b}
        if runs:
            runs.state = depth.state

    return before


def _block_entry(modules, layers: list[WidthLayer], grams: dict, depth: DepthHooks) -> dict:
    errors = depth.errors()
    entry: dict[str, Any] = {"block": errors["block"]}
    for sub, layer in zip(("attention", "mlp"), layers):
        gram = grams.pop(layer.id)
        found = width_levels(modules, layer, gram, levels(layer.size), depth.tokens)
        found[0] = {"error": errors[sub]["error"], "raw": errors[sub]["raw"], "removed": []}
        entry[sub] = {"size": layer.size, "module": layer.module, "levels": found}
        entry[sub]["repaired"] = errors[sub]["repaired"]
    return entry


def _add_sizes(model, structure: ModelStructure, widths: dict, blocks: list[dict]) -> None:
    """Paths and parameter counts of every block's units, KV bytes of its attention units."""
    units = discover_units(model, structure, ("block", "attention", "mlp"))
    by_id = {u.id: u for u in units}
    dtype = next(model.parameters()).dtype
    for i, entry in enumerate(blocks):
        entry["block"] |= {"path": by_id[f"block:{i}"].path, "params": by_id[f"block:{i}"].params}
        for sub in ("attention", "mlp"):
            unit, layer = by_id[f"{sub}:{i}"], widths[sub][i]
            entry[sub] |= {"path": unit.path, "params": unit.params}
            entry[sub]["unit_params"] = layer.unit_params
        entry["attention"]["bytes_per_unit"] = kv_bytes(1, widths["attention"][i].head_dim, dtype)


def _add_refusals(structure: ModelStructure, blocks: list[dict]) -> None:
    """``refused``: {removal: why} for each removal of a block that ``--repair ls`` cannot
    fold, because the sublayer before it writes into the residual stream through a norm
    (Gemma3's post-norms); the table leaves those options out. A removal with nothing before
    it (the first block's attention) is left unrepaired by the repair, not refused."""
    for i, entry in enumerate(blocks):
        refused = {}
        for removal in ("attention", "mlp", "block"):
            writer = maximal_runs(slots_of(Kind(removal), i), len(blocks))[0].writer
            if writer is None:
                continue
            block, kind = writer
            if not writes_through_one_linear(structure.blocks[block].sublayer(kind)):
                refused[removal] = (
                    f"{kind}:{block} writes into the residual stream through a norm: "
                    f"--repair ls cannot fold the removal of {removal}:{i} into it"
                )
        if refused:
            entry["refused"] = refused


def _check_donor(donor: OptionTable, model_info: dict) -> None:
    """Refuse, before the walk, a table to reuse the probe's KLs of that was made for another
    model or has no KL for some block."""
    check_model(donor, model_info)
    if any("kl" not in b for b in donor.blocks):
        raise ConfigError("the reused table has no probe's KLs for every block: build it again")


def _reuse_probe(blocks: list[dict], donor: OptionTable, rel: float = 1e-6) -> None:
    """Give ``blocks`` the probe's KLs of ``donor``, refused when the two disagree on any
    removal's stream error (another calibration, probe or walk)."""
    for i, (b, d) in enumerate(zip(blocks, donor.blocks)):
        for key, ours, theirs in _removal_errors(b, d):
            if abs(ours - theirs) > rel * max(abs(ours), abs(theirs), 1e-12):
                raise ConfigError(
                    f"the reused table was measured on other data (block {i} {key} stream "
                    f"error {theirs:.6g}, here {ours:.6g}): build the table with the probe"
                )
        b["kl"] = dict(d["kl"])
        if "runs" in d:
            b["runs"] = dict(d["runs"])


def _removal_errors(ours: dict, theirs: dict):
    yield "block", ours["block"]["error"], theirs["block"]["error"]
    for sub in ("attention", "mlp"):
        yield sub, ours[sub]["levels"][0]["error"], theirs[sub]["levels"][0]["error"]


def check_table(table: OptionTable, model_info: dict, runtime: Runtime = TORCH) -> None:
    """Refuse a table made for another model or timed in another runtime, naming the
    difference."""
    check_runtime(table, runtime.name)
    check_model(table, model_info)


def check_model(table: OptionTable, model_info: dict) -> None:
    """Refuse a table made for another model than the one ``model_info`` describes."""
    for key in ("model_type", "num_blocks", "params_all"):
        if table.model.get(key) != model_info.get(key):
            raise ConfigError(
                f"this option table was made for another model ({key} "
                f"{table.model.get(key)!r}, this model {model_info.get(key)!r}): build it again"
            )


def check_runtime(table: OptionTable, name: str) -> None:
    """Refuse a table timed in another runtime than ``name`` (torch, llamacpp)."""
    timed = runtime_name(table.latency)
    if timed != name:
        raise ConfigError(
            f"this option table was timed in {timed}, not {name}: pass --runtime {timed}, or "
            "build the table again without --table"
        )
