"""Prune, then quantize: the real packaged SmolLM2-135M, 25% of params removed by BI blocks,
then int8 on CPU (MLP output projections kept fp32 unless said). Sizes, prefill/decode speed
(all models interleaved in one run, 2 threads, medians) and held-out perplexity, relative to
the dense fp32 model."""

from __future__ import annotations

import importlib.util

import torch

import depthcut as dc
from depthcut.eval.latency import measure_many
from depthcut.eval.run import EvalSettings, perplexity_fn
from depthcut.quantization import QuantizeConfig, quantize, size_mb
from results_file import FLAG_NOTE, flag, provenance, show


def measure() -> dict:
    """Dense and pruned, fp32 and int8: size, interleaved latency and held-out perplexity."""
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    calib = dc.calibration(tok, "wiki", n_samples=8, seq_len=128)
    cfg = dc.PruneConfig(units=("block",), importance="bi", budget=dc.Budget(params=0.25))
    pruned, plan, _ = dc.prune(model, cfg, calib, progress=False)
    models = {
        "dense fp32": model,
        "dense + dynamic int8": quantize(model),
        "pruned fp32": pruned,
        "pruned + dynamic int8": quantize(pruned),
        "pruned + dynamic int8 incl. MLP out": quantize(pruned, QuantizeConfig(keep_mlp_out=False)),
    }
    if importlib.util.find_spec("torchao"):  # the optional extra: pip install 'depthcut[torchao]'
        ao = quantize(pruned, QuantizeConfig("torchao_int8_weight_only"))
        models["pruned + torchao int8 weight-only"] = ao
    ppl = perplexity_fn(tok, EvalSettings())
    lat = measure_many(models, lengths=(128,), batches=(1, 8), new_tokens=32, repeats=3)
    rows = [
        {"name": name, "mb": size_mb(m), "ppl": ppl(m), "latency": lat[name].to_dict()}
        for name, m in models.items()
    ]
    return {"removed_blocks": len(plan.removed_blocks), "removed": plan.fraction(), "rows": rows}


def table(data: dict) -> str:
    """Size, speed-ups and perplexity, relative to dense fp32."""
    base = data["rows"][0]
    b = base["latency"]
    lines = [
        f"{provenance(data)}: SmolLM2-135M; pruned = {data['removed_blocks']}/30 blocks by BI "
        f"({data['removed']:.1%} of params); medians of 3 interleaved runs; perplexity on 8 "
        "held-out windows of 512 tokens",
        "",
        "| model | size MB | size ratio | prefill 128 ms | prefill speed-up | decode b1 tokens/s "
        "| decode b1 speed-up | decode b8 speed-up | ppl |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    flagged = False
    for r in data["rows"]:
        t, w = r["latency"], flag(r["latency"]) or flag(b)
        flagged = flagged or bool(w)
        pre, dec = t["prefill_ms"]["128"], t["decode_tps"]
        lines.append(
            f"| {r['name']} | {r['mb']:.0f} | {r['mb'] / base['mb']:.2f} | {pre:.0f} "
            f"| {b['prefill_ms']['128'] / pre:.2f}×{w} | {dec['1']:.1f} "
            f"| {dec['1'] / b['decode_tps']['1']:.2f}×{w} "
            f"| {dec['8'] / b['decode_tps']['8']:.2f}×{w} | {r['ppl']:.2f} |"
        )
    return "\n".join(lines + ([f"\n{FLAG_NOTE}"] if flagged else []))


if __name__ == "__main__":
    show("quantize_int8", table, measure)
