"""``depthcut recover RUN_DIR``: recover a saved pruned run into a new directory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from depthcut import log
from depthcut.errors import DepthcutError
from depthcut.eval.run import EvalSettings
from depthcut.jobs.common import ModelRef, Output
from depthcut.recovery.config import RecoverConfig, rank, refuse_cpu_fsdp


@dataclass(frozen=True)
class RecoverJob:
    """Recover the pruned ``run`` by ``recover`` into ``out``; ``teacher`` (default: the
    run's recorded source) is the dense model for distillation and the perplexity reference."""

    run: ModelRef
    recover: RecoverConfig
    out: Output
    teacher: str | None = None
    evaluation: EvalSettings = field(default_factory=lambda: EvalSettings(perplexity=True))
    resume: bool = False
    teacher_targets: str | None = None  # stored top-k targets (default: beside checkpoints)
    stream_teacher: bool = False  # compute them one teacher block in memory at a time

    @property
    def checkpoints(self) -> Path:
        """Beside the output (which stays absent until the run completes), removed after."""
        out = self.out.path.resolve()
        return out.with_name(out.name + ".checkpoints")

    @property
    def stamp(self) -> Path:
        """The record of what the checkpoints belong to (``identity`` and the model's shapes)."""
        return self.checkpoints / "depthcut-recover.json"

    def identity(self) -> dict:
        """What a resumed run must share with the run that left the checkpoints."""
        return {
            "run": self.run.source,
            "teacher": self.teacher,
            # a resumed run may be given more time
            "recover": {k: v for k, v in self.recover.to_dict().items() if k != "max_minutes"},
        }


def gap_closed(dense: float | None, pruned: float, recovered: float) -> float | None:
    """Share of the perplexity gap (pruned − dense) that recovery closed."""
    if dense is None or pruned <= dense:
        return None
    return (pruned - recovered) / (pruned - dense)


def run_recover(job: RecoverJob) -> Path:
    """Load the run, recover it, measure perplexity before/after (and of the dense teacher
    when known), save into ``out`` with recovery.json and recovery.png; returns ``out``.

    Checkpoints are kept in ``job.checkpoints`` while it trains (removed once ``out`` is
    saved): a run killed or interrupted there continues with ``resume``."""
    from depthcut.io import read_meta

    refuse_cpu_fsdp()
    meta = read_meta(job.run.name)
    job.out.prepare()
    teacher_name = job.teacher or meta.get("source")
    if job.recover.loss == "kd" and not teacher_name:
        raise DepthcutError("--loss kd needs --teacher MODEL (the run does not record its source)")
    if rank() == 0:  # the other processes of a torchrun find the folder made
        check_checkpoints(job)
    try:
        out = _recover_and_save(job, meta, teacher_name)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"interrupted; the last checkpoint is kept in {job.checkpoints}: run the same "
            "command with --resume to continue"
        ) from None
    except Exception:
        if rank() == 0 and not any(job.checkpoints.glob("checkpoint-*")):  # nothing to resume
            shutil.rmtree(job.checkpoints, ignore_errors=True)
        raise
    if rank() == 0:
        shutil.rmtree(job.checkpoints, ignore_errors=True)
    return out


def _recover_and_save(job: RecoverJob, meta: dict, teacher_name: str | None) -> Path:
    from depthcut.eval.run import perplexity_fn
    from depthcut.io import save
    from depthcut.planning.plan import Plan
    from depthcut.recovery.run import Checkpoints, recover, recovery_data
    from depthcut.report.curves import plot_recovery

    cfg = job.recover
    model, tok = job.run.load()
    check_model(job, model)
    teacher_ref = dataclasses.replace(job.run, name=teacher_name) if teacher_name else None
    teacher = None
    if teacher_ref is not None and not job.stream_teacher:
        teacher = teacher_ref.load(need_tokenizer=False)[0]
    ppl = perplexity_fn(tok, job.evaluation)
    before = {"pruned": ppl(model), "dense": ppl(teacher) if teacher is not None else None}
    data = recovery_data(tok, cfg)  # tokenized once: the targets are keyed by these windows
    guide = distillation_teacher(job, tok, teacher, teacher_ref, data[0])
    where = Checkpoints(job.checkpoints, job.resume)
    recovered, history = recover(model, tok, cfg, guide, data=data, checkpoints=where)
    if rank() != 0:  # data-parallel: one process evaluates and saves
        return job.out.path
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


def check_checkpoints(job: RecoverJob) -> None:
    """Before any work: checkpoints left by a killed run are continued only with
    ``resume`` and only by the same run; ``resume`` needs them."""
    folder, identity, stamp = job.checkpoints, job.identity(), job.stamp
    if not job.resume:
        if folder.exists():
            raise DepthcutError(
                f"{folder} holds the checkpoints of an interrupted recovery: pass --resume to "
                "continue it, or delete the folder to start again"
            )
        folder.mkdir(parents=True)
        stamp.write_text(json.dumps(identity, indent=2) + "\n")
        return
    if not stamp.exists():
        raise DepthcutError(f"nothing to resume: {folder} holds no checkpoints; drop --resume")
    found = json.loads(stamp.read_text())
    for key in identity:
        if found.get(key) != identity[key]:
            what = _what(key, found, identity)
            raise DepthcutError(
                f"--resume: the checkpoints in {folder} are of another {what}; resume with the "
                "same arguments, or delete the folder to start again"
            )


def check_model(job: RecoverJob, model) -> None:
    """The loaded model's tensor names and shapes against the checkpoints' (a resumed run
    must train the same pruned model); recorded on a fresh start."""
    stamp = job.stamp
    found = json.loads(stamp.read_text()) if stamp.exists() else {}
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    key = hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16]
    if found.get("model") is None:
        if rank() == 0:
            stamp.write_text(json.dumps(found | {"model": key}, indent=2) + "\n")
    elif found["model"] != key:
        raise DepthcutError(
            f"--resume: the checkpoints in {job.checkpoints} are of another model (other tensor "
            "shapes); resume with the same run, or delete the folder to start again"
        )


def _what(key: str, found: dict, identity: dict) -> str:
    if key != "recover":
        return f"{key} ({found.get(key)} here, {identity[key]} now)"
    old, new = found[key], identity[key]
    diff = ", ".join(f"{k}: {old.get(k)} → {new[k]}" for k in new if old.get(k) != new[k])
    return f"recovery setting ({diff})"


def distillation_teacher(job: RecoverJob, tok, teacher, teacher_ref, train_data):
    """What the KD loss reads: the live teacher (``teacher_topk`` 0), or its top-k targets,
    read from the targets file when it was computed for these windows, else computed (from
    the teacher in memory, or streamed from its checkpoint) and stored there."""
    from depthcut.recovery.targets import (
        compute_targets,
        fingerprint,
        load_targets,
        stream_targets,
    )

    cfg = job.recover
    if cfg.loss != "kd":
        return None
    if not cfg.teacher_topk:
        return teacher if teacher is not None else teacher_ref.load(need_tokenizer=False)[0]
    k = cfg.teacher_topk
    path = Path(job.teacher_targets or job.checkpoints / f"teacher-top{k}.safetensors")
    expected = fingerprint(tok, train_data, k)
    if path.exists():
        return load_targets(path, expected)
    if job.stream_teacher:
        from depthcut.models import resolve

        targets = stream_targets(resolve(teacher_ref.name), train_data, k, expected)
    else:
        targets = compute_targets(teacher, train_data, k, expected)
    targets.save(path)
    return targets


def _summary(history: dict) -> str:
    p = history["perplexity"]
    dense = f"dense {p['dense']:.2f}, " if p["dense"] is not None else ""
    gap = f", {p['gap_closed']:.0%} of the gap closed" if p["gap_closed"] is not None else ""
    return (
        f"depthcut: recovery {dense}pruned {p['pruned']:.2f} → recovered {p['recovered']:.2f}"
        f"{gap} ({history['steps']} steps, kept step {history['best_step']}, "
        f"{history['seconds'] / 60:.1f} min; {history['stopped']})"
    )
