"""``depthcut recover RUN_DIR``: recover a saved pruned run into a new directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from depthcut.errors import DepthcutError
from depthcut.recover.config import RecoverConfig


def recover_config(args) -> RecoverConfig:
    return RecoverConfig(
        method=getattr(args, "recover", None) or args.method,
        loss=args.loss,
        lr=args.lr,
        max_steps=args.max_steps,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        batch_size=args.train_batch_size,
        seq_len=args.train_seq_len,
        eval_every=args.eval_every,
        patience=args.patience,
        lora_r=args.lora_r,
        temperature=args.temperature,
        lm_weight=args.lm_weight,
        source=args.calib,
    )


def gap_closed(dense: float | None, pruned: float, recovered: float) -> float | None:
    """Share of the perplexity gap (pruned − dense) that recovery closed."""
    if dense is None or pruned <= dense:
        return None
    return (pruned - recovered) / (pruned - dense)


def recover_dir(args, settings) -> Path:
    """Load RUN_DIR, recover it, measure perplexity before/after (and of the dense teacher
    when known), save into ``args.out`` with recovery.json and recovery.png."""
    from depthcut.eval.run import perplexity_fn
    from depthcut.io import prepare_output, read_meta, save
    from depthcut.models import load_model
    from depthcut.planning.plan import Plan
    from depthcut.recover.run import recover
    from depthcut.report.curves import plot_recovery

    cfg = recover_config(args)
    meta = read_meta(args.run)
    prepare_output(args.out, args.overwrite)
    teacher_name = args.teacher or meta.get("source")
    if cfg.loss == "kd" and not teacher_name:
        raise DepthcutError("--loss kd needs --teacher MODEL (the run does not record its source)")
    model, tok = load_model(args.run, tokenizer=args.tokenizer)
    teacher = load_model(teacher_name, need_tokenizer=False)[0] if teacher_name else None
    ppl = perplexity_fn(tok, settings)
    before = {"pruned": ppl(model), "dense": ppl(teacher) if teacher is not None else None}
    recovered, history = recover(model, tok, cfg, teacher if cfg.loss == "kd" else None)
    history["perplexity"] = before | {"recovered": ppl(recovered)}
    history["perplexity"]["gap_closed"] = gap_closed(
        before["dense"], before["pruned"], history["perplexity"]["recovered"]
    )
    print(_summary(history), file=sys.stderr)

    def extra(tmp: Path) -> None:
        (tmp / "recovery.json").write_text(json.dumps(history, indent=2) + "\n")
        plot_recovery(history, tmp / "recovery.png", f"recovery ({cfg.method}, {cfg.loss})")

    plans = [Plan.from_dict(p) for p in meta["plans"]]
    info = {"source": meta.get("source"), "recovery": meta.get("recovery", []) + [cfg.to_dict()]}
    return save(recovered, plans, args.out, tok, args.overwrite, extra=extra, meta=info)


def _summary(history: dict) -> str:
    p = history["perplexity"]
    dense = f"dense {p['dense']:.2f}, " if p["dense"] is not None else ""
    gap = f", {p['gap_closed']:.0%} of the gap closed" if p["gap_closed"] is not None else ""
    return (
        f"depthcut: recovery {dense}pruned {p['pruned']:.2f} → recovered {p['recovered']:.2f}"
        f"{gap} ({history['steps']} steps, kept step {history['best_step']}, "
        f"{history['seconds'] / 60:.1f} min; {history['stopped']})"
    )
