"""The pipeline behind ``depthcut prune``: score → plan → apply → (eval) → save, one shot or
as ``--steps k`` rounds of prune → recover → re-score."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from depthcut.errors import DepthcutError
from depthcut.recipe import Recipe


def prune_to_dir(model_name: str, recipe: Recipe, args, settings=None) -> Path:
    """Prune ``model_name`` into ``args.out`` with scores, plan, report and recipe beside the
    model: one shot, or ``recipe.steps`` rounds with recovery; quantized last if asked."""
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
    if encoder:
        model, tok = load_encoder(model_name)
    else:
        model, tok = load_model(model_name, tokenizer=getattr(args, "tokenizer", None))
    calib = calibration(tok, args.calib, args.n_samples, args.seq_len, args.batch_size)
    cfg = recipe.prune
    if recipe.steps > 1 or recipe.recover is not None:
        return _iterative(model, tok, recipe, calib, args, settings)
    scores = score(model, cfg, calib)
    the_plan = plan(scores, cfg, model)
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

    return _save(pruned, the_plan, args, tok, extra, recipe)


def _save(model, plans, args, tok, extra, recipe: Recipe) -> Path:
    from depthcut.io import save
    from depthcut.quantize import quantize

    source = args.model
    meta = {"source": str(Path(source).resolve()) if Path(source).exists() else source}
    if recipe.quantize is not None:
        model = quantize(model, recipe.quantize)
        meta["quantization"] = recipe.quantize.to_dict()

    def write_extra(tmp: Path) -> None:
        extra(tmp)
        recipe.save(tmp / "recipe.json")

    out = save(model, plans, args.out, tok, overwrite=args.overwrite, extra=write_extra, meta=meta)
    extras = sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".md", ".png"))
    print(f"depthcut: wrote {out} (model, {', '.join(extras)})", file=sys.stderr)
    return out


def _iterative(model, tok, recipe: Recipe, calib, args, settings) -> Path:
    """k rounds of prune → (recover) → re-score; history.json and history.png beside."""
    from depthcut.eval.run import EvalSettings, perplexity_fn
    from depthcut.recover.loop import prune_recover_loop
    from depthcut.report.curves import plot_iterative
    from depthcut.report.write import iterative_markdown

    if getattr(args, "encoder", False):
        raise DepthcutError("--steps/--recover train causal LMs; not for --encoder models")
    ppl = perplexity_fn(tok, settings or EvalSettings(source=args.eval_text))
    pruned, plans, history = prune_recover_loop(
        model, tok, recipe.prune, calib, recipe.steps, recipe.recover, ppl
    )

    def extra(tmp: Path) -> None:
        (tmp / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        plot_iterative(history, tmp / "history.png")
        (tmp / "report.md").write_text(iterative_markdown(history, recipe.to_dict()))

    return _save(pruned, plans, args, tok, extra, recipe)
