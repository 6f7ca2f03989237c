"""Pruned vs dense latency on the real packaged SmolLM2-135M at 25% of blocks removed (BI).

Dense and pruned are measured interleaved in one process with pinned threads; the measured
speedups are printed next to the ideal (L·B + H) / ((L − k)·B + H), with B the bytes of one
block and H the bytes of the LM head (embedding lookups cost no MACs).
"""

from __future__ import annotations

import torch

import depthcut as dc
from depthcut.eval.latency import measure_many
from results_file import FLAG_NOTE, flag, provenance, show


def ideal_speedup(plan: dc.Plan, block_bytes: int, head_bytes: int) -> float:
    n, k = plan.model["num_blocks"], len(plan.removed_blocks)
    return (n * block_bytes + head_bytes) / ((n - k) * block_bytes + head_bytes)


def measure() -> dict:
    """Dense and 25%-of-blocks-pruned SmolLM2-135M timed interleaved, with the ideal speed-up."""
    torch.set_num_threads(2)
    model, tok = dc.load_model("smollm2-135m")
    calib = dc.calibration(tok, "wiki", n_samples=8, seq_len=128)
    cfg = dc.PruneConfig(units=("block",), importance="bi", budget=dc.Budget(params=0.25))
    plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg)
    pruned = dc.apply(model, plan)
    block = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    head = model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    res = measure_many(
        {"dense": model, "pruned": pruned},
        lengths=(128, 512),
        batches=(1, 8),
        new_tokens=32,
        repeats=5,
        threads=2,
    )
    return {
        "removed_blocks": len(plan.removed_blocks),
        "num_blocks": plan.model["num_blocks"],
        "removed": plan.fraction(),
        "block_bytes": block,
        "head_bytes": head,
        "ideal": ideal_speedup(plan, block, head),
        "latency": {name: r.to_dict() for name, r in res.items()},
    }


def table(data: dict) -> str:
    """Measured speed-ups beside the ideal one."""
    d, p, ideal = data["latency"]["dense"], data["latency"]["pruned"], data["ideal"]
    lines = [
        f"{provenance(data)}: SmolLM2-135M, {data['removed_blocks']}/{data['num_blocks']} blocks "
        f"removed by BI ({data['removed']:.1%} of params), medians of 5 interleaved runs; ideal "
        f"speed-up (L·B+H)/((L−k)·B+H) = {ideal:.3f} (B = {data['block_bytes']:,} bytes of a "
        f"block, H = {data['head_bytes']:,} of the LM head)",
        "",
        "| measure | dense | pruned | speed-up | % of ideal |",
        "|---|---:|---:|---:|---:|",
    ]
    warn = flag(d) or flag(p)
    for n in d["prefill_ms"]:
        s = d["prefill_ms"][n] / p["prefill_ms"][n]
        lines.append(
            f"| prefill {n} tokens (ms) | {d['prefill_ms'][n]:.1f} | {p['prefill_ms'][n]:.1f} "
            f"| {s:.3f}{warn} | {s / ideal:.0%} |"
        )
    for b in d["decode_tps"]:
        s = p["decode_tps"][b] / d["decode_tps"][b]
        lines.append(
            f"| decode batch {b} (tokens/s) | {d['decode_tps'][b]:.1f} "
            f"| {p['decode_tps'][b]:.1f} | {s:.3f}{warn} | {s / ideal:.0%} |"
        )
    return "\n".join(lines + ([f"\n{FLAG_NOTE}"] if warn else []))


if __name__ == "__main__":
    show("depth_speedup", table, measure)
