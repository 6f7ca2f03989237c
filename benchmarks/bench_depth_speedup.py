"""Pruned vs dense latency on the real packaged SmolLM2-135M at 25% of blocks removed (BI).

Dense and pruned are measured interleaved in one process with pinned threads; the measured
speedups are printed next to the ideal (L·B + H) / ((L − k)·B + H), with B the bytes of one
block and H the bytes of the LM head (embedding lookups cost no MACs).
"""

from __future__ import annotations

import torch

import depthcut as dc
from depthcut.eval.latency import measure_many


def ideal_speedup(plan: dc.Plan, block_bytes: int, head_bytes: int) -> float:
    n, k = plan.model["num_blocks"], len(plan.removed_blocks)
    return (n * block_bytes + head_bytes) / ((n - k) * block_bytes + head_bytes)


def main() -> None:
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    calib = dc.calibration(tok, "wiki", n_samples=8, seq_len=128)
    cfg = dc.PruneConfig(units=("block",), importance="bi", budget=dc.Budget(params=0.25))
    plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg)
    pruned = dc.apply(model, plan)
    block = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    head = model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    ideal = ideal_speedup(plan, block, head)
    res = measure_many(
        {"dense": model, "pruned": pruned},
        lengths=(128, 512),
        batches=(1, 8),
        new_tokens=32,
        repeats=5,
        threads=2,
    )
    d, p = res["dense"], res["pruned"]
    k = len(plan.removed_blocks)
    print(
        f"SmolLM2-135M, {k}/{plan.model['num_blocks']} blocks removed "
        f"({plan.fraction():.1%} of params), 2 threads, medians of 5 interleaved runs"
    )
    print(f"ideal speedup (L·B+H)/((L−k)·B+H) = {ideal:.3f} (B={block:,} B, H={head:,} B)")
    print("| measure | dense | pruned | speedup | % of ideal |")
    print("|---|---:|---:|---:|---:|")
    for n in d.prefill_ms:
        s = d.prefill_ms[n] / p.prefill_ms[n]
        print(
            f"| prefill {n} tok (ms) | {d.prefill_ms[n]:.1f} | {p.prefill_ms[n]:.1f} "
            f"| {s:.3f} | {s / ideal:.0%} |"
        )
    for b in d.decode_tps:
        s = p.decode_tps[b] / d.decode_tps[b]
        print(
            f"| decode batch {b} (tok/s) | {d.decode_tps[b]:.1f} | {p.decode_tps[b]:.1f} "
            f"| {s:.3f} | {s / ideal:.0%} |"
        )


if __name__ == "__main__":
    main()
