"""The joint search timed in llama.cpp (``--runtime llamacpp``, ``dc.LlamaCpp``).

PyTorch's decode hooks price an option by what it costs in PyTorch; a model deployed to
llama.cpp pays llama.cpp's costs, which differ by kind (removing attention is worth more there,
irregular MLP widths less). This runtime measures the option costs in llama.cpp itself:

- **Option table.** Every block of a decoder has the same shapes, so an option costs the same
  in every block and one whole-model variant per option level suffices: the dense model; every
  other block removed; every block's attention removed; every block's MLP removed; every MLP
  narrowed to each level (7/8 … 1/8); every attention kept at each smaller KV-group count.
  Each is built by the same plan surgery, exported by depthcut's GGUF writer (the per-layer
  ``deci`` arrays where shapes differ) and timed in llama.cpp: batch-1 decode after a
  ``context``-token prompt and one ``prefill``-token forward, every variant once per round,
  ``rounds`` rounds, fastest of each. Per-block costs are differences of whole-model times
  divided by the blocks changed: block ``(dense − half) ÷ removed``, attention ``(dense −
  attention-free) ÷ N``, MLP likewise, a narrower level's time ratio ``1 − (dense − variant) ÷
  (N × its sublayer's time)``. The result has the form of ``search.cost.latency_table``'s.
- **Candidates.** Each assembled candidate is exported and timed against the dense export
  (written once), interleaved, medians of ``compare_rounds``: the correction rounds of
  ``search.joint`` then correct the predictions against llama.cpp, not PyTorch.

Cost on SmolLM2-135M at f16 (30 blocks): 9 variant exports and one timing subprocess, and one
export per candidate. Llama-family models only (llama, mistral, qwen2): llama.cpp reads
per-layer shapes for those (``deci``).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import weakref
from pathlib import Path

import torch
from torch import nn

from depthcut.errors import ConfigError
from depthcut.extras import require
from depthcut.formats import llamacpp
from depthcut.formats.gguf_file import QUANTS, check_quant, gguf_name, write_gguf
from depthcut.formats.layout import LLAMA_FAMILY
from depthcut.graph.structure import discover_structure
from depthcut.kinds import Kind
from depthcut.methods import apply_plan, describe
from depthcut.methods.width.layers import WidthLayer
from depthcut.planning.plan import Action, Plan
from depthcut.surgery.share import shared_copy
from depthcut.timing import CpuWatch, reliability, spread
from depthcut.units.discover import Unit

SUBLAYERS = {"attention": Kind.HEAD, "mlp": Kind.NEURON}

TIME = r"""
import json, sys, time, numpy as np, llama_cpp
spec = json.load(open(sys.argv[1]))
ids = np.random.default_rng(0).integers(0, spec["vocab"], spec["prefill"]).tolist()
n_ctx = max(spec["prefill"], spec["context"] + spec["steps"]) + 8
out = {name: {"decode": [], "prefill": []} for name in spec["files"]}
for _ in range(spec["rounds"]):
    for name, path in spec["files"].items():  # interleaved: every file once per round
        llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=spec["prefill"],
                              n_threads=spec["threads"], verbose=False)
        llm.eval(ids[: spec["context"]])  # the decode's prompt; pages every weight in
        start = time.perf_counter()
        for _ in range(spec["steps"]):
            llm.eval([ids[0]])
        out[name]["decode"].append((time.perf_counter() - start) / spec["steps"])
        if spec["time_prefill"]:
            llm.reset()
            start = time.perf_counter()
            llm.eval(ids)
            out[name]["prefill"].append(time.perf_counter() - start)
        del llm
json.dump(out, sys.stdout)
"""


class LlamaCpp:
    """Times the joint search's options and candidates in llama.cpp: GGUF exports of type
    ``quant`` (``tokenizer``: the model's, which every GGUF carries), ``threads`` (default
    torch's), decode of ``steps`` tokens after a ``context``-token prompt, prefill of
    ``prefill`` tokens."""

    name = "llamacpp"

    def __init__(
        self,
        tokenizer,
        quant: str = "f16",
        threads: int | None = None,
        rounds: int = 3,
        compare_rounds: int = 5,
        context: int = 64,
        steps: int = 32,
        prefill: int = 512,
    ) -> None:
        check_quant(quant)
        require("llama_cpp")
        if tokenizer is None:
            raise ConfigError("--runtime llamacpp: the model has no tokenizer (a GGUF needs one)")
        self.tokenizer, self.quant = tokenizer, quant
        self.threads = threads or torch.get_num_threads()
        self.rounds, self.compare_rounds = rounds, compare_rounds
        self.context, self.steps, self.prefill = context, steps, prefill
        self.folder = Path(tempfile.mkdtemp(prefix="depthcut-llamacpp-"))
        weakref.finalize(self, _remove, self.folder)
        self._dense: tuple[int, Path] | None = None

    @property
    def device(self) -> str:
        """What the option table records as its timing device."""
        return f"llama.cpp {self.quant}, {self.threads} threads"

    def check(self, model: nn.Module) -> None:
        """Refuse a model whose pruned variants llama.cpp cannot load (before any work)."""
        model_type = getattr(model.config, "model_type", None)
        if model_type not in LLAMA_FAMILY:
            raise ConfigError(
                f"--runtime llamacpp times per-layer GGUFs, which llama.cpp reads for "
                f"{', '.join(LLAMA_FAMILY)} models; this model is {model_type}: use --runtime "
                "torch"
            )

    def latency_table(
        self,
        model: nn.Module,
        units: list[Unit],
        widths: dict[str, list[WidthLayer]],
        kept_levels: dict[str, list[int]],
    ) -> dict:
        """The option table's decode and prefill tables, from whole-model variants timed in
        llama.cpp (see the module's docstring)."""
        self.check(model)
        plans, removed = variant_plans(model, units, widths, kept_levels)
        files = {name: self._export(model, plan, name) for name, plan in plans.items()}
        watch = CpuWatch(children=True)
        watch.start()
        times = self.time_files(files, self.rounds, model)
        other = watch.stop()
        for path in files.values():
            path.unlink()
        num_blocks = len(widths["mlp"])
        sizes = {k: v[0].size for k, v in widths.items()}
        decode = derive({n: t["decode"] for n, t in times.items()}, num_blocks, removed, sizes)
        pre = derive({n: t["prefill"] for n, t in times.items()}, num_blocks, removed, sizes)
        decode["unreliable"] = reliability({"decode": decode["spread"]}, other)
        decode |= {"other_cpu": other, "device": self.device, "context": self.context}
        decode |= {"steps": self.steps, "variants": sorted(plans)}
        pre |= {"other_cpu": other, "context": self.prefill_tokens(model)}
        pre["unreliable"] = reliability({"prefill": pre["spread"]}, other)
        return decode | {"prefill": pre}

    def compare(self, dense: nn.Module, pruned: nn.Module, prefill: int | None) -> dict:
        """Decode (and with ``prefill``, prefill) time ratios pruned ÷ dense in llama.cpp
        (medians of interleaved rounds; the prefill prompt is the table's own length)."""
        files = {"dense": self._dense_file(dense), "pruned": self.write(pruned, "candidate")}
        watch = CpuWatch(children=True)
        watch.start()
        times = self.time_files(files, self.compare_rounds, dense, prefill is not None)
        other = watch.stop()
        files["pruned"].unlink()
        out = {"other_cpu": other}
        for key in ("decode", "prefill") if prefill is not None else ("decode",):
            medians = {n: statistics.median(t[key]) for n, t in times.items()}
            out[key] = medians["pruned"] / medians["dense"]
        return out

    def prefill_tokens(self, model: nn.Module) -> int:
        """The prefill prompt's length: ``prefill``, at most the model's positions, at least
        the decode's ``context`` (the timing script draws both prompts from one list)."""
        most = int(getattr(model.config, "max_position_embeddings", 1 << 30))
        return max(min(self.prefill, most), self.context)

    def _dense_file(self, dense: nn.Module) -> Path:
        if self._dense is None or self._dense[0] != id(dense):
            self._dense = (id(dense), self.write(dense, "dense"))
        return self._dense[1]

    def _export(self, model: nn.Module, plan: Plan, name: str) -> Path:
        variant = apply_plan(shared_copy(model), plan, inplace=True) if plan.actions else model
        return self.write(variant, name.replace(":", "-"))

    def write(self, model: nn.Module, name: str) -> Path:
        """``model`` exported to this runtime's GGUF type under the work folder's ``name``."""
        folder = self.folder / name
        folder.mkdir(exist_ok=True)
        write_gguf(model, self.tokenizer, folder, self.quant, threads=self.threads, summary=False)
        return folder / gguf_name(self.quant)

    def time_files(
        self, files: dict[str, Path], rounds: int, model: nn.Module, prefill: bool = True
    ) -> dict:
        """{name: {"decode": [s/token per round], "prefill": [s per round, empty unless
        ``prefill``]}} of the GGUF ``files`` ({name: path}) of ``model``'s vocabulary and
        positions, interleaved."""
        spec = {"files": {n: str(p) for n, p in files.items()}, "rounds": rounds}
        spec["time_prefill"] = prefill
        spec |= {"threads": self.threads, "context": self.context, "steps": self.steps}
        spec |= {"vocab": _vocab(model), "prefill": self.prefill_tokens(model)}
        spec_file = self.folder / "spec.json"
        spec_file.write_text(json.dumps(spec), encoding="utf-8")
        args = [sys.executable, "-c", TIME, str(spec_file)]
        return json.loads(llamacpp._run(args, "timing GGUF files in llama.cpp"))


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _vocab(model: nn.Module) -> int:
    return int(getattr(model.config, "vocab_size", 2))


def variant_plans(
    model: nn.Module,
    units: list[Unit],
    widths: dict[str, list[WidthLayer]],
    kept_levels: dict[str, list[int]],
) -> tuple[dict[str, Plan], int]:
    """({variant name: the plan that makes it}, blocks the ``blocks`` variant removes): the
    dense model, every other block removed, and every block's attention / MLP at each level
    of ``kept_levels`` below full (0: removed)."""
    info = describe(model, discover_structure(model))
    by_id = {u.id: u for u in units}
    num_blocks = len(widths["mlp"])
    plans = {"dense": Plan([], info)}
    odd = range(1, num_blocks, 2)
    if odd:
        gone = [by_id[f"block:{i}"] for i in odd]
        plans["blocks"] = Plan([Action(Kind.BLOCK, u.block, u.path, u.params) for u in gone], info)
    for sub, layers in widths.items():
        for kept in kept_levels[sub]:
            if kept < layers[0].size:
                plans[f"{sub}:{kept}"] = Plan(_level_actions(sub, layers, kept, by_id), info)
    return plans, len(odd)


def _level_actions(sub: str, layers: list[WidthLayer], kept: int, by_id: dict) -> list[Action]:
    """Every block's ``sub`` removed (``kept`` 0) or narrowed to its first ``kept`` units."""
    if kept == 0:
        found = [by_id[f"{sub}:{w.block}"] for w in layers]
        return [Action(Kind(sub), u.block, u.path, u.params) for u in found]
    out = []
    for w in layers:
        gone = tuple(range(kept, w.size))
        out.append(Action(SUBLAYERS[sub], w.block, w.module, len(gone) * w.unit_params, None, gone))
    return out


def derive(
    times: dict[str, list[float]], num_blocks: int, removed: int, sizes: dict[str, int]
) -> dict:
    """``search.cost``'s table ({"units", "total", "ratios", "spread"}) from the variants'
    timed rounds (fastest of each): per-block costs are whole-model differences over the blocks
    changed; a block costs at least its two sublayers; ratios lie in [0, 1]."""
    t = {name: min(runs) for name, runs in times.items()}
    dense = t["dense"]
    per = {sub: max(dense - t[f"{sub}:0"], 0.0) / num_blocks for sub in sizes}
    block = (dense - t["blocks"]) / removed if removed else 0.0
    block = max(block, per["attention"] + per["mlp"])
    ratios: dict[str, dict[int, float]] = {}
    for sub, size in sizes.items():
        ratios[sub] = {size: 1.0, 0: 0.0}
        for name, seconds in t.items():
            kept = _kept(name, sub)
            if kept is not None and 0 < kept < size:
                share = (dense - seconds) / (num_blocks * per[sub]) if per[sub] > 0 else 0.0
                ratios[sub][kept] = min(max(1.0 - share, 0.0), 1.0)
    units: dict[str, float] = {}
    for i in range(num_blocks):
        units |= {f"block:{i}": block, f"attention:{i}": per["attention"], f"mlp:{i}": per["mlp"]}
    worst = max(spread(runs) for runs in times.values())
    return {"units": units, "total": dense, "ratios": ratios, "spread": worst, "seconds": t}


def _kept(name: str, sub: str) -> int | None:
    kind, _, kept = name.partition(":")
    return int(kept) if kind == sub and kept else None


RUNTIMES = ("torch", "llamacpp")


def parse_runtime(spec: str) -> tuple[str, str]:
    """``torch``, ``llamacpp`` or ``llamacpp:TYPE`` → (runtime, GGUF type), checked before any
    work (``require_runtime`` checks what it needs installed)."""
    name, _, quant = spec.partition(":")
    if name not in RUNTIMES or (name == "torch" and quant):
        raise ConfigError(
            f"--runtime {spec!r}: choose torch (default) or llamacpp[:TYPE] (TYPE a GGUF type, "
            "default f16)"
        )
    if name == "llamacpp" and (quant or "f16") not in QUANTS:
        raise ConfigError(
            f"--runtime {spec!r}: unknown GGUF type {quant!r}; use one of {', '.join(QUANTS)}"
        )
    return name, quant or "f16"


def require_runtime(spec: str) -> None:
    """Refuse a runtime whose engine is not installed (llama.cpp's binding), in one line."""
    if parse_runtime(spec)[0] == "llamacpp":
        require("llama_cpp")


def make_runtime(spec: str, tokenizer, model: nn.Module):
    """The runtime ``spec`` names for ``model``: None for PyTorch (the search's default), else
    a checked :class:`LlamaCpp`."""
    name, quant = parse_runtime(spec)
    if name == "torch":
        return None
    runtime = LlamaCpp(tokenizer, quant)
    runtime.check(model)
    return runtime
