"""Width (heads / neurons) vs depth (blocks) pruning on the real packaged SmolLM2-135M.

1. Neuron metrics at 30% of MLP neurons: activation frequency vs magnitude vs Taylor.
2. Equal parameter reduction (~16% of all params) by blocks (BI), by neurons and by
   heads + neurons: held-out perplexity and decode tokens/s at batch 1 and 16, all measured
   interleaved in one process with pinned threads.
"""

from __future__ import annotations

import torch

import depthcut as dc
from depthcut.data import evaluation_tokens
from depthcut.eval.latency import measure_many
from depthcut.eval.perplexity import perplexity


def prune(model, calib, **kw):
    cfg = dc.PruneConfig(**kw)
    plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg)
    return dc.apply(model, plan), plan


def ppl(model, ids) -> float:
    return perplexity(model, ids, window=512, max_windows=4, progress=False).perplexity


def main() -> None:
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    calib = dc.calibration(tok, "wiki", n_samples=8, seq_len=128)
    ids = evaluation_tokens(tok, "wiki", 4 * 512 + 1)
    print(f"dense perplexity (4×512 held-out wiki tokens, no BOS): {ppl(model, ids):.2f}\n")
    print("| neuron metric (30% of neurons) | params removed | perplexity |")
    print("|---|---:|---:|")
    for metric in ("activation_frequency", "magnitude", "taylor"):
        pruned, plan = prune(model, calib, units=("neuron",), neurons=0.3, width_importance=metric)
        print(f"| {metric} | {plan.fraction():.1%} | {ppl(pruned, ids):.2f} |", flush=True)
    variants = {
        "depth: 6 blocks (BI)": dict(units=("block",), budget=dc.Budget(params=0.15)),
        "width: neurons (taylor)": dict(
            units=("neuron",), neurons=0.27, width_importance="taylor", round_to=64
        ),
        "width: heads+neurons (taylor)": dict(
            units=("head", "neuron"),
            heads=0.3,
            neurons=0.19,
            width_importance="taylor",
            round_to=64,
        ),
    }
    models, rows = {"dense": model}, {}
    for name, kw in variants.items():
        models[name], plan = prune(model, calib, **kw)
        rows[name] = (plan.fraction(), ppl(models[name], ids))
    lat = measure_many(models, lengths=(512,), batches=(1, 16), new_tokens=24, repeats=3)
    d = lat["dense"]
    print(
        "\n| variant | params removed | perplexity | decode b1 tok/s (×dense) "
        "| decode b16 tok/s (×dense) | prefill 512 ms (×dense) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, res in lat.items():
        frac, p = rows.get(name, (0.0, ppl(model, ids)))
        cells = [
            f"{res.decode_tps[b]:.1f} ({res.decode_tps[b] / d.decode_tps[b]:.2f}×)" for b in (1, 16)
        ]
        pre = f"{res.prefill_ms[512]:.0f} ({d.prefill_ms[512] / res.prefill_ms[512]:.2f}×)"
        print(f"| {name} | {frac:.1%} | {p:.2f} | {cells[0]} | {cells[1]} | {pre} |")


if __name__ == "__main__":
    main()
