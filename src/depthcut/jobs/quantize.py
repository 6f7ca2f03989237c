"""``depthcut quantize RUN_DIR``: quantize a pruned (and recovered) run, measure it against
the float run, and save it (int8) or prepare the 4-bit GPU step (AWQ/GPTQ)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from depthcut import log
from depthcut.errors import DepthcutError
from depthcut.eval.run import EvalSettings
from depthcut.jobs.common import ModelRef, Output


@dataclass(frozen=True)
class QuantizeJob:
    """Quantize ``run`` with ``method`` (int8 on the CPU, or the AWQ/GPTQ recipe for a GPU);
    ``skip``: module path suffixes kept float; without ``out`` only the measurement runs."""

    run: ModelRef
    method: str = "dynamic_int8"
    out: Output | None = None
    skip: tuple[str, ...] = ()
    keep_mlp_out: bool = True
    group_size: int = 128
    evaluation: EvalSettings = field(default_factory=lambda: EvalSettings(perplexity=True))


def run_quantize(job: QuantizeJob) -> Path | None:
    """The quantized run (or the 4-bit recipe) in ``out``; None when only measured."""
    from depthcut.int4 import INT4_METHODS

    if job.method in INT4_METHODS:
        return _int4_dir(job)
    return _int8_dir(job)


def _int8_dir(job: QuantizeJob) -> Path | None:
    from depthcut.eval.run import evaluate_models
    from depthcut.io import read_meta, save
    from depthcut.planning.plan import Plan
    from depthcut.quantize import SAVED_METHODS, QuantizeConfig, quantize, size_mb

    cfg = QuantizeConfig(job.method, job.skip, keep_mlp_out=job.keep_mlp_out)
    if job.out and cfg.method not in SAVED_METHODS:
        raise DepthcutError(
            f"{cfg.method} is for measurement only (slower than dynamic_int8 on CPU here); "
            "drop --out, or use --method dynamic_int8"
        )
    if job.out:
        job.out.prepare()
    meta = read_meta(job.run.name)
    model, tok = job.run.load()
    qmodel = quantize(model, cfg)
    results = evaluate_models({"float": model, "quantized": qmodel}, tok, job.evaluation)
    for name, m in (("float", model), ("quantized", qmodel)):
        results[name]["size_mb"] = size_mb(m)
    log.result(_table(results))
    if not job.out:
        return None
    plans = [Plan.from_dict(p) for p in meta["plans"]]
    info = {k: meta[k] for k in ("source", "recovery") if k in meta}
    info["quantization"] = cfg.to_dict()

    def extra(tmp: Path) -> None:
        (tmp / "quantize.json").write_text(json.dumps(results, indent=2) + "\n")

    return save(qmodel, plans, job.out.path, tok, job.out.overwrite, extra=extra, meta=info)


def _table(results: dict) -> str:
    f, q = results["float"], results["quantized"]
    rows = [("size (MB)", f"{f['size_mb']:.1f}", f"{q['size_mb']:.1f}")]
    if "perplexity" in f:
        rows.append(
            (
                "perplexity",
                f"{f['perplexity']['perplexity']:.3f}",
                f"{q['perplexity']['perplexity']:.3f}",
            )
        )
    if "latency" in f:
        for batch, tps in f["latency"]["decode_tps"].items():
            rows.append(
                (
                    f"decode batch {batch} (tok/s)",
                    f"{tps:.1f}",
                    f"{q['latency']['decode_tps'][batch]:.1f}",
                )
            )
    lines = ["| metric | float | quantized |", "|---|---:|---:|"]
    return "\n".join(lines + [f"| {m} | {a} | {b} |" for m, a, b in rows])


def _int4_dir(job: QuantizeJob) -> Path:
    from depthcut.int4 import GPU_STEPS, check_alignment, recipe_yaml
    from depthcut.io import atomic_dir

    if not job.out:
        raise DepthcutError(f"--method {job.method} writes a GPU recipe: give --out")
    out = job.out.prepare()
    model, _ = job.run.load(need_tokenizer=False)
    check_alignment(model, job.group_size)
    recipe = recipe_yaml(job.method, job.group_size, job.skip or ("lm_head",))

    def write(tmp: Path) -> None:
        (tmp / "int4_recipe.yaml").write_text(recipe)
        text = GPU_STEPS.format(
            method=job.method, group_size=job.group_size, model_dir=Path(job.run.name).resolve()
        )
        (tmp / "INT4.md").write_text(text)

    atomic_dir(out, write, job.out.overwrite)
    log.status(f"depthcut: widths fit group size {job.group_size}; recipe -> {out}")
    return out
