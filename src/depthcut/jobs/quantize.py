"""``depthcut quantize RUN_DIR``: quantize a pruned (and recovered) run, measure it against
the float run, and save it: int8 (PyTorch), or 4-bit AWQ / GPTQ (llm-compressor)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch

from depthcut import log
from depthcut.config import Int4Method, Int8Method
from depthcut.errors import DepthcutError
from depthcut.eval.run import EvalSettings
from depthcut.jobs.common import CalibSpec, ModelRef, Output


@dataclass(frozen=True)
class QuantizeJob:
    """Quantize ``run`` with ``method`` (int8, or 4-bit AWQ / GPTQ through llm-compressor on
    ``calibration``); ``skip``: module path suffixes kept float; without ``out`` only the
    int8 measurement runs."""

    run: ModelRef
    method: Int8Method | Int4Method = "dynamic_int8"
    out: Output | None = None
    skip: tuple[str, ...] = ()
    keep_mlp_out: bool = True
    group_size: int = 128
    evaluation: EvalSettings = field(default_factory=lambda: EvalSettings(perplexity=True))
    calibration: CalibSpec = field(default_factory=lambda: CalibSpec(n_samples=32))


def run_quantize(job: QuantizeJob) -> Path | None:
    """The quantized run (or the 4-bit recipe) in ``out``; None when only measured."""
    from depthcut.config import INT4_METHODS

    if job.method in INT4_METHODS:
        return _int4_dir(job)
    return _int8_dir(job)


def _int8_dir(job: QuantizeJob) -> Path | None:
    from depthcut.eval.run import evaluate_models
    from depthcut.io import read_meta, save
    from depthcut.planning.plan import Plan
    from depthcut.quantization import SAVED_METHODS, QuantizeConfig, quantize, size_mb

    method = cast(Int8Method, job.method)  # the 4-bit methods went to _int4_dir
    cfg = QuantizeConfig(method, job.skip, keep_mlp_out=job.keep_mlp_out)
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
    """AWQ / GPTQ executed by llm-compressor in its own environment on the run exported as a
    Hugging Face checkpoint; the 4-bit model (compressed-tensors) with quantize.json."""
    import tempfile

    from depthcut.int4 import check_alignment, llmcompressor_python, run_worker
    from depthcut.io import atomic_dir

    if not job.out:
        raise DepthcutError(f"--method {job.method} writes the 4-bit model: give --out")
    out = job.out.prepare()
    python = llmcompressor_python()  # before any work
    model, tok = job.run.load()
    check_alignment(model, job.group_size)
    inputs = _int4_inputs(job, tok)
    with tempfile.TemporaryDirectory(prefix="depthcut-int4-") as scratch:
        checkpoint = _hf_checkpoint(job.run.name, Path(scratch))

        def write(tmp: Path) -> None:
            ignore = job.skip or ("lm_head",)
            result = run_worker(python, checkpoint, inputs, tmp, job.method, job.group_size, ignore)
            report = _int4_report(result, model)
            (tmp / "quantize.json").write_text(json.dumps(report, indent=2) + "\n")
            log.result(_int4_line(report))

        atomic_dir(out, write, job.out.overwrite)
    return out


def _int4_inputs(job: QuantizeJob, tok) -> dict:
    """Calibration windows and the held-out perplexity windows (depthcut's protocol)."""
    from depthcut.data import evaluation_tokens
    from depthcut.eval.perplexity import protocol_spans, window_ids

    s = job.evaluation
    tokens = evaluation_tokens(tok, s.source, s.window * s.max_windows + 1)
    ids = torch.as_tensor(tokens, dtype=torch.long).flatten()
    _, spans = protocol_spans(len(ids), s.window, s.stride, s.max_windows)
    bos = s.bos_id(tok)
    windows = [window_ids(ids, begin, end, bos) for begin, end, _ in spans]
    calib = job.calibration.data(tok).input_ids
    return {"calibration": calib, "windows": windows, "targets": [n for _, _, n in spans]}


def _hf_checkpoint(run: str, scratch: Path) -> Path:
    """The run as a plain Hugging Face checkpoint, or with remote code when its layers differ."""
    from depthcut.formats.run import export_run

    try:
        return export_run(run, "hf", scratch / "hf", verify=False)
    except DepthcutError:
        return export_run(run, "hf-hetero", scratch / "hf-hetero", verify=False)


def _int4_report(result: dict, model) -> dict:
    from depthcut.quantization import size_mb

    count = result["count"]
    ppl = {k: math.exp(result[f"{k}_nll"] / count) for k in ("float", "quantized")}
    return result | {
        "perplexity": ppl,
        "float_mb": size_mb(model),
        "quantized_mb": result["bytes"] / 1e6,
    }


def _int4_line(report: dict) -> str:
    p = report["perplexity"]
    return (
        f"depthcut: {report['method']} W4A16 (group {report['group_size']}): perplexity "
        f"{p['float']:.3f} → {p['quantized']:.3f}, {report['float_mb']:.1f} MB → "
        f"{report['quantized_mb']:.1f} MB on disk ({report['oneshot_seconds']:.0f} s)"
    )
