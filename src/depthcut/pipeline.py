"""The pipeline behind ``depthcut prune``: score → plan → apply → (eval) → save, one shot or
as ``--steps k`` rounds of prune → recover → re-score."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from depthcut.config import PruneConfig
from depthcut.errors import DepthcutError


def prune_to_dir(model_name: str, cfg: PruneConfig, args, settings=None) -> Path:
    """Prune ``model_name`` into ``args.out`` with scores, plan and report beside the model."""
    from depthcut.api import apply, plan, score
    from depthcut.data import calibration
    from depthcut.eval.run import evaluate_models, param_counts
    from depthcut.io import prepare_output
    from depthcut.models import load_encoder, load_model
    from depthcut.report.write import comparison_rows, table, write_report

    prepare_output(args.out, args.overwrite)  # refuse before any expensive work
    encoder = getattr(args, "encoder", False)
    if encoder and settings is not None:
        raise DepthcutError("--perplexity/--latency are for causal LMs, not --encoder models")
    model, tok = (load_encoder if encoder else load_model)(model_name)
    calib = calibration(tok, args.calib, args.n_samples, args.seq_len, args.batch_size)
    if getattr(args, "steps", 1) > 1 or getattr(args, "recover", None):
        return _iterative(model, tok, cfg, calib, args, settings)
    scores = score(model, cfg, calib)
    the_plan = plan(scores, cfg)
    print(the_plan.summary())
    pruned = apply(model, the_plan)
    if settings is not None:
        results = evaluate_models({"before": model, "after": pruned}, tok, settings)
    else:
        results = {"before": param_counts(model), "after": param_counts(pruned)}
    print(table(comparison_rows(results["before"], results["after"])))

    def extra(tmp: Path) -> None:
        scores.save(tmp / "scores.json")
        write_report(tmp, the_plan, scores, results["before"], results["after"])

    return _save(pruned, the_plan, args, tok, extra, model_name)


def _save(model, plans, args, tok, extra, source: str) -> Path:
    from depthcut.io import save

    meta = {"source": str(Path(source).resolve()) if Path(source).exists() else source}
    out = save(model, plans, args.out, tok, overwrite=args.overwrite, extra=extra, meta=meta)
    extras = sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".md", ".png"))
    print(f"depthcut: wrote {out} (model, {', '.join(extras)})", file=sys.stderr)
    return out


def _iterative(model, tok, cfg: PruneConfig, calib, args, settings) -> Path:
    """k rounds of prune → (recover) → re-score; history.json and history.png beside."""
    from depthcut.eval.run import EvalSettings, perplexity_fn
    from depthcut.recover.job import recover_config
    from depthcut.recover.loop import prune_recover_loop
    from depthcut.report.curves import plot_iterative

    if getattr(args, "encoder", False):
        raise DepthcutError("--steps/--recover train causal LMs; not for --encoder models")
    rcfg = recover_config(args) if args.recover else None
    ppl = perplexity_fn(tok, settings or EvalSettings(source=args.eval_text))
    pruned, plans, history = prune_recover_loop(model, tok, cfg, calib, args.steps, rcfg, ppl)

    def extra(tmp: Path) -> None:
        (tmp / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        plot_iterative(history, tmp / "history.png")

    return _save(pruned, plans, args, tok, extra, args.model)
