"""``depthcut recover RUN_DIR``: recover a saved pruned run into a new directory."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from depthcut import log
from depthcut.errors import DepthcutError
from depthcut.eval.run import EvalSettings
from depthcut.jobs.common import ModelRef, Output
from depthcut.recover.config import RecoverConfig


@dataclass(frozen=True)
class RecoverJob:
    """Recover the pruned ``run`` by ``recover`` into ``out``; ``teacher`` (default: the
    run's recorded source) is the dense model for distillation and the perplexity reference."""

    run: ModelRef
    recover: RecoverConfig
    out: Output
    teacher: str | None = None
    evaluation: EvalSettings = field(default_factory=lambda: EvalSettings(perplexity=True))


def gap_closed(dense: float | None, pruned: float, recovered: float) -> float | None:
    """Share of the perplexity gap (pruned − dense) that recovery closed."""
    if dense is None or pruned <= dense:
        return None
    return (pruned - recovered) / (pruned - dense)


def run_recover(job: RecoverJob) -> Path:
    """Load the run, recover it, measure perplexity before/after (and of the dense teacher
    when known), save into ``out`` with recovery.json and recovery.png; returns ``out``."""
    from depthcut.eval.run import perplexity_fn
    from depthcut.io import read_meta, save
    from depthcut.planning.plan import Plan
    from depthcut.recover.run import recover
    from depthcut.report.curves import plot_recovery

    cfg = job.recover
    meta = read_meta(job.run.name)
    job.out.prepare()
    teacher_name = job.teacher or meta.get("source")
    if cfg.loss == "kd" and not teacher_name:
        raise DepthcutError("--loss kd needs --teacher MODEL (the run does not record its source)")
    model, tok = job.run.load()
    teacher = None
    if teacher_name:
        teacher = dataclasses.replace(job.run, name=teacher_name).load(need_tokenizer=False)[0]
    ppl = perplexity_fn(tok, job.evaluation)
    before = {"pruned": ppl(model), "dense": ppl(teacher) if teacher is not None else None}
    recovered, history = recover(model, tok, cfg, teacher if cfg.loss == "kd" else None)
    history["perplexity"] = before | {"recovered": ppl(recovered)}
    history["perplexity"]["gap_closed"] = gap_closed(
        before["dense"], before["pruned"], history["perplexity"]["recovered"]
    )
    log.status(_summary(history))

    def extra(tmp: Path) -> None:
        (tmp / "recovery.json").write_text(json.dumps(history, indent=2) + "\n")
        plot_recovery(history, tmp / "recovery.png", f"recovery ({cfg.method}, {cfg.loss})")

    plans = [Plan.from_dict(p) for p in meta["plans"]]
    info = {"source": meta.get("source"), "recovery": meta.get("recovery", []) + [cfg.to_dict()]}
    return save(recovered, plans, job.out.path, tok, job.out.overwrite, extra=extra, meta=info)


def _summary(history: dict) -> str:
    p = history["perplexity"]
    dense = f"dense {p['dense']:.2f}, " if p["dense"] is not None else ""
    gap = f", {p['gap_closed']:.0%} of the gap closed" if p["gap_closed"] is not None else ""
    return (
        f"depthcut: recovery {dense}pruned {p['pruned']:.2f} → recovered {p['recovered']:.2f}"
        f"{gap} ({history['steps']} steps, kept step {history['best_step']}, "
        f"{history['seconds'] / 60:.1f} min; {history['stopped']})"
    )
