"""The whole pipeline on the real packaged SmolLM2-135M, step by step: dense → pruned (the
default: 25% of the non-embedding parameters as MLP neurons ranked by ls, kept widths rounded
to multiples of 64) → repaired (its ls refit) → recovered (LoRA r=16 + distillation from the
dense model's stored top-64 targets, a fixed number of steps) → 4-bit: AWQ and GPTQ
(llm-compressor, W4A16, group 64: the hidden size 576 is not a multiple of 128) and llama.cpp's
Q4_K_M, without and with its importance matrix of 64 × 256 calibration tokens.

    python benchmarks/bench_pipeline.py --steps 90

Columns: held-out perplexity and mean next-token KL to the dense model (8 × 512 evaluation
tokens, PyTorch; AWQ / GPTQ perplexity from the reloaded compressed-tensors model in
llm-compressor's environment, same windows; Q4_K_M from llama.cpp's own logits on 4 × 512
tokens, beside its float16 export on the same windows), size on disk (float16 for the PyTorch
rows, the files for the rest), llama.cpp decode tokens/s (2 threads, medians of 3 interleaved
rounds) where the format runs there. Writes results/pipeline_smollm2.json."""

from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import depthcut as dc
from bench_llamacpp import DECODE, MEASURE, PREFILL, ROUNDS, THREADS
from bench_quality import WINDOW, WINDOWS, held_out
from depthcut.data import evaluation_tokens
from depthcut.eval.run import EvalSettings
from depthcut.formats.gguf_file import gguf_name, write_gguf
from depthcut.jobs import CalibSpec, ModelRef, Output, QuantizeJob, run_quantize
from depthcut.recovery.config import RecoverConfig
from depthcut.recovery.run import recover
from results_file import FLAG_NOTE, RESULTS, flag, write

GROUP = 64


def f16_mb(model) -> float:
    return 2 * sum(p.numel() for p in model.parameters()) / 1e6


def starting_points(model, calib) -> tuple:
    """(pruned, repaired, plan): the default's plan with kept MLP widths rounded to the 4-bit
    group size (AWQ / GPTQ need every Linear input width to be a multiple of it)."""
    budget = dc.Budget(params=0.25, count="non_embedding", mode="nearest")
    cfg = dc.PruneConfig(units=("neuron",), width_importance="ls", budget=budget, round_to=GROUP)
    plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg, model)
    work = copy.deepcopy(model)
    dc.repair(work, plan, calib, "ls", progress=False)
    return dc.apply(model, plan), dc.apply(work, plan, inplace=True), plan


def recovery_config(steps: int) -> RecoverConfig:
    """The recovery every pruned model of the benchmarks gets: LoRA with distillation from the
    dense model's stored top-64 targets, ``steps`` steps of 4 × 128 tokens. A fixed number of
    steps, not a time limit, so that a busy machine changes the seconds, not the result."""
    return RecoverConfig(
        method="lora", loss="kd", max_steps=steps, seq_len=128, eval_every=10, patience=99
    )


def log_gap_closed(before: float, after: float, dense: float) -> float:
    """The share of ``before``'s log-perplexity gap to ``dense`` that ``after`` closed."""
    return (math.log(before) - math.log(after)) / (math.log(before) - math.log(dense))


def torch_rows(model, tok, ids, steps: int) -> tuple[dict, dict]:
    """(rows of the PyTorch steps, their models)."""
    calib = dc.calibration(tok, "wiki", n_samples=12, seq_len=256)
    pruned, repaired, plan = starting_points(model, calib)
    cfg = recovery_config(steps)  # ≈ 6 CPU-minutes here at 90 steps
    recovered, history = recover(repaired, tok, cfg, teacher=model, progress=False)
    models = {"dense": model, "pruned": pruned, "repaired (ls)": repaired}
    models["recovered (LoRA + top-64 KD)"] = recovered
    rows = {}
    for name, m in models.items():
        ppl, kl = held_out(m, model, ids, None)
        rows[name] = {"ppl": ppl, "kl": kl, "mb": f16_mb(m), "format": "PyTorch float16"}
    rows["recovered (LoRA + top-64 KD)"]["recovery"] = {
        k: history[k] for k in ("steps", "best_step", "seconds", "stopped")
    }
    return rows, models | {"plan": plan}


def int4_rows(recovered, plan, tok, scratch: Path) -> dict:
    """AWQ and GPTQ of the recovered model through ``depthcut quantize``'s job."""
    run = dc.save(recovered, [plan], scratch / "recovered", tok)
    rows = {}
    for method in ("awq", "gptq"):
        out = scratch / method
        job = QuantizeJob(
            ModelRef(str(run)),
            method,
            Output(out),
            group_size=GROUP,
            evaluation=EvalSettings(window=WINDOW, stride=WINDOW, max_windows=WINDOWS),
            calibration=CalibSpec(n_samples=16),
        )
        run_quantize(job)
        report = json.loads((out / "quantize.json").read_text())
        rows[f"recovered + {method.upper()} (W4A16, g{GROUP})"] = {
            "ppl": report["perplexity"]["quantized"],
            "float_ppl_there": report["perplexity"]["float"],
            "kl": None,
            "mb": report["quantized_mb"],
            "format": "compressed-tensors",
            "seconds": report["oneshot_seconds"],
        }
    return rows


def gguf_rows(models: dict, tok, scratch: Path) -> dict:
    """Dense and recovered in llama.cpp, float16 and Q4_K_M (plain, + imatrix), interleaved."""
    ids = evaluation_tokens(tok, "wiki", max_tokens=512 * 4)
    windows = [ids[i * 512 : (i + 1) * 512] for i in range(4)]
    files = {}
    for name in ("dense", "recovered (LoRA + top-64 KD)"):
        for quant in ("f16", "q4_k_m", "q4_k_m+imatrix"):
            folder = scratch / f"gguf-{len(files)}"
            folder.mkdir()
            write_gguf(models[name], tok, folder, quant)
            label = quant.upper().replace("+IMATRIX", " + imatrix")
            files[f"{name}, GGUF {label}"] = str(folder / gguf_name(quant))
    spec = {"files": files, "threads": THREADS, "rounds": ROUNDS, "prefill": PREFILL}
    spec |= {"decode": DECODE, "windows": windows}
    (scratch / "spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-c", MEASURE, str(scratch / "spec.json")]
    res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return {
        name: {
            "ppl_llamacpp": r["ppl"],
            "kl": None,
            "mb": Path(files[name]).stat().st_size / 1e6,
            "format": "GGUF",
            "decode_tps": r["decode"],
            "prefill_tps": r["prefill"],
            "unreliable": max(r["spread"].values()) > 0.1,  # rounds spread over 10%
        }
        for name, r in res.items()
    }


def targets(rows: dict) -> dict:
    """The issue's targets, measured."""
    pruned, rec = rows["pruned"]["ppl"], rows["recovered (LoRA + top-64 KD)"]["ppl"]
    repaired, dense = rows["repaired (ls)"]["ppl"], rows["dense"]["ppl"]
    final, dense_q4 = rows["recovered (LoRA + top-64 KD), GGUF Q4_K_M"], rows["dense, GGUF Q4_K_M"]
    imatrix = rows["recovered (LoRA + top-64 KD), GGUF Q4_K_M + imatrix"]
    int4 = [r["ppl"] / rec - 1 for k, r in rows.items() if "W4A16" in k]
    return {
        "log_gap_closed_by_recovery": log_gap_closed(repaired, rec, dense),
        "log_gap_closed_from_unrepaired": log_gap_closed(pruned, rec, dense),
        "int4_added_ppl": max(int4),
        "smaller_than_dense_f16": rows["dense"]["mb"] / final["mb"],
        "decode_vs_dense_q4_k_m": final["decode_tps"] / dense_q4["decode_tps"],
        "decode_unreliable": bool(final.get("unreliable") or dense_q4.get("unreliable")),
        "q4_k_m_imatrix_ppl_vs_plain": imatrix["ppl_llamacpp"] / final["ppl_llamacpp"],
    }


def doc_table(results: dict) -> str:
    """The documentation's table, from the results file."""
    lines = [
        f"`{results['command']}` ({results['date']}, commit {results['commit']}, "
        f"{results['hardware']['cores']}-core CPU, 2 threads)",
        "",
        "| step | format | perplexity | KL to dense | MB on disk | llama.cpp decode tok/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in results["rows"].items():
        ppl = r.get("ppl") or r.get("ppl_llamacpp")
        note = "" if "ppl" in r else " (llama.cpp, 4×512)"
        kl = f"{r['kl']:.3f}" if r.get("kl") is not None else "—"
        tps = f"{r['decode_tps']:.0f}{flag(r)}" if "decode_tps" in r else "—"
        lines.append(f"| {name} | {r['format']} | {ppl:.2f}{note} | {kl} | {r['mb']:.0f} | {tps} |")
    flagged = any(flag(r) for r in results["rows"].values())
    return "\n".join(lines + ([f"\n{FLAG_NOTE}"] if flagged else []))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=90, help="recovery steps (4 × 128 tokens)")
    parser.add_argument("--table", action="store_true", help="print the docs table and stop")
    args = parser.parse_args()
    if args.table:
        print(doc_table(json.loads((RESULTS / "pipeline_smollm2.json").read_text())))
        return
    torch.set_num_threads(THREADS)
    model, tok = dc.load_model("smollm2-135m")
    ids = evaluation_tokens(tok, "wiki", WINDOW * WINDOWS)
    rows, models = torch_rows(model, tok, ids, args.steps)
    print(json.dumps(rows, indent=1), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        recovered = models["recovered (LoRA + top-64 KD)"]
        rows |= int4_rows(recovered, models["plan"], tok, Path(tmp))
        rows |= gguf_rows(models, tok, Path(tmp))
    fields = {"model": "smollm2-135m", "rows": rows, "targets": targets(rows)}
    print(write("pipeline_smollm2", fields))
    print(doc_table(json.loads((RESULTS / "pipeline_smollm2.json").read_text())))


if __name__ == "__main__":
    main()
