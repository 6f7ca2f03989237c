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


def main() -> None:
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
    base = models["dense fp32"]
    b_lat, b_size = lat["dense fp32"], size_mb(base)
    print(
        f"SmolLM2-135M (dequantized from Q4_1); pruned = {len(plan.removed_blocks)}/30 blocks "
        f"by BI ({plan.fraction():.1%} of params); 2 threads, medians of 3 interleaved runs; "
        "ratios vs dense fp32; ppl: window 512, 8 held-out windows"
    )
    print(
        "| model | size MB | size ratio | prefill 128 ms | prefill speedup | decode b1 tok/s "
        "| decode b1 speedup | decode b8 speedup | ppl |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in models.items():
        r, size = lat[name], size_mb(m)
        print(
            f"| {name} | {size:.0f} | {size / b_size:.2f} | {r.prefill_ms[128]:.0f} "
            f"| {b_lat.prefill_ms[128] / r.prefill_ms[128]:.2f}× | {r.decode_tps[1]:.1f} "
            f"| {r.decode_tps[1] / b_lat.decode_tps[1]:.2f}× "
            f"| {r.decode_tps[8] / b_lat.decode_tps[8]:.2f}× | {ppl(m):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
