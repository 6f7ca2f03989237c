"""The one-shot pipeline behind ``depthcut prune``: score → plan → apply → (eval) → save."""

from __future__ import annotations

import sys
from pathlib import Path

from depthcut.config import PruneConfig
from depthcut.errors import DepthcutError


def prune_to_dir(model_name: str, cfg: PruneConfig, args, settings=None) -> Path:
    """Prune ``model_name`` into ``args.out`` with scores, plan and report beside the model."""
    from depthcut.api import apply, plan, score
    from depthcut.data import calibration
    from depthcut.eval.run import evaluate_models, param_counts
    from depthcut.io import prepare_output, save
    from depthcut.models import load_encoder, load_model
    from depthcut.report.write import comparison_rows, table, write_report

    prepare_output(args.out, args.overwrite)  # refuse before any expensive work
    encoder = getattr(args, "encoder", False)
    if encoder and settings is not None:
        raise DepthcutError("--perplexity/--latency are for causal LMs, not --encoder models")
    model, tok = (load_encoder if encoder else load_model)(model_name)
    calib = calibration(tok, args.calib, args.n_samples, args.seq_len, args.batch_size)
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

    out = save(pruned, the_plan, args.out, tok, overwrite=args.overwrite, extra=extra)
    extras = sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".md", ".png"))
    print(f"depthcut: wrote {out} (model, {', '.join(extras)})", file=sys.stderr)
    return out
