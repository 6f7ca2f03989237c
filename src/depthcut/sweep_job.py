"""``depthcut sweep MODEL``: the measuring and the files around :func:`depthcut.sweep.run_sweep`."""

from __future__ import annotations

import sys
from pathlib import Path

from depthcut.sweep import SweepConfig, run_sweep


def sweep_config(args) -> SweepConfig:
    from depthcut.cli import comma_list as split

    extra = {
        "calib": args.calib,
        "n_samples": args.n_samples,
        "seq_len": args.seq_len,
        "window": args.window,
        "max_windows": args.max_windows,
        "bos": args.bos,
        "eval_text": args.eval_text,
    }
    return SweepConfig(
        methods=split(args.methods),
        budgets=tuple(float(b) for b in split(args.budgets)),
        count=args.count,
        protect_first=args.protect_first,
        protect_last=args.protect_last,
        latency=args.latency,
        tasks=split(args.tasks),
        task_limit=args.task_limit,
        extra=extra,
    )


def make_measure(tok, cfg: SweepConfig, settings):
    """measure(model, dense) -> perplexity, latency vs dense (interleaved), task accuracy."""
    from depthcut.eval.latency import measure_many
    from depthcut.eval.run import perplexity_fn
    from depthcut.eval.zeroshot import zeroshot

    ppl = perplexity_fn(tok, settings)

    def measure(model, dense) -> dict:
        point = {"perplexity": ppl(model)}
        if cfg.latency:
            res = measure_many({"dense": dense, "model": model}, (128,), (1,), 16, 3)
            d, m = res["dense"], res["model"]
            point |= {
                "decode_tps": m.decode_tps[1],
                "prefill_ms": m.prefill_ms[128],
                "decode_speedup": m.decode_tps[1] / d.decode_tps[1],
            }
        tasks = zeroshot(model, tok, list(cfg.tasks), cfg.task_limit) if cfg.tasks else {}
        for task, r in tasks.items():
            point[task] = r["acc"]
            point[f"{task}_n"] = r["n"]
        return point

    return measure


def sweep_dir(args, settings) -> Path:
    from depthcut.data import calibration
    from depthcut.models import load_model
    from depthcut.report.curves import plot_sweep

    cfg = sweep_config(args)
    out = Path(args.out)
    model, tok = load_model(args.model, tokenizer=args.tokenizer)
    calib = calibration(tok, args.calib, args.n_samples, args.seq_len, args.batch_size)

    def progress(point: dict) -> None:
        print(
            f"depthcut: sweep {point['method']} {point['budget']}: ppl {point['perplexity']:.3f}",
            file=sys.stderr,
            flush=True,
        )

    state = run_sweep(
        model, tok, calib, cfg, out, make_measure(tok, cfg, settings), args.overwrite, progress
    )
    plot_sweep(state, out)
    (out / "sweep.md").write_text(sweep_table(state) + "\n")
    print(sweep_table(state))
    return out


def sweep_table(state: dict) -> str:
    """Methods × budgets: params removed, perplexity, decode speedup, task accuracy."""
    tasks = state["config"]["tasks"]
    head = ["method", "budget", "params removed", "ppl"]
    head += ["decode b1 ×dense"] * bool(state["config"]["latency"]) + [f"{t} acc" for t in tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in state["points"]:
        row = [
            p["method"],
            "-" if p["budget"] is None else f"{p['budget']:.0%}",
            f"{p.get('removed_fraction', 0.0):.1%}",
            f"{p['perplexity']:.2f}",
        ]
        if state["config"]["latency"]:
            row.append(f"{p.get('decode_speedup', 1.0):.2f}")
        row += [f"{p[t]:.3f}" for t in tasks]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
