"""``depthcut sweep MODEL``: the measuring and the files around :func:`depthcut.sweep.run_sweep`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from depthcut import log
from depthcut.eval.run import EvalSettings
from depthcut.jobs.common import CalibSpec, ModelRef, Output
from depthcut.sweep import SweepConfig, run_sweep


@dataclass(frozen=True)
class SweepJob:
    """Methods × budgets of ``sweep`` on ``model``, resumable in ``out``."""

    model: ModelRef
    sweep: SweepConfig
    out: Output
    calib: CalibSpec = field(default_factory=CalibSpec)
    evaluation: EvalSettings = field(default_factory=EvalSettings)


def recorded(job: SweepJob) -> SweepConfig:
    """The sweep config with the calibration and perplexity settings it is resumed on."""
    from depthcut.refit.needs import FLOOR_SAMPLES

    ev = job.evaluation
    extra = {
        "calib": job.calib.source,
        "n_samples": job.calib.n_samples or FLOOR_SAMPLES,
        "seq_len": job.calib.seq_len,
        "window": ev.window,
        "max_windows": ev.max_windows,
        "bos": ev.bos,
        "eval_text": ev.source,
    }
    return replace(job.sweep, extra=extra)


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


def run_sweep_job(job: SweepJob) -> Path:
    """Run (or resume) the sweep; sweep.json, sweep.md and the curves in ``out``."""
    from depthcut.report.curves import plot_sweep

    cfg, out = recorded(job), Path(job.out.path)
    model, tok = job.model.load()
    calib = job.calib.data(tok)

    def progress(point: dict) -> None:
        log.status(
            f"depthcut: sweep {point['method']} {point['budget']}: ppl {point['perplexity']:.3f}"
        )

    measure = make_measure(tok, cfg, job.evaluation)
    state = run_sweep(model, tok, calib, cfg, out, measure, job.out.overwrite, progress)
    plot_sweep(state, out)
    (out / "sweep.md").write_text(sweep_table(state) + "\n")
    log.result(sweep_table(state))
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
