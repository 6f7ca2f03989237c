"""Command line: one function per verb. Bad input → one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from depthcut.errors import DepthcutError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--units",
        default="block",
        help="comma list of block,attention,mlp,head,neuron; or 'fine' (attention regions and "
        "single Linear layers, thesis Chapter 3)",
    )
    p.add_argument(
        "--importance",
        default="bi",
        help="bi, angular, gromov, kl, ce, ppl; fine: angular, bi, taylor, kl",
    )
    p.add_argument(
        "--strategy",
        default=None,
        help="ranked (default), contiguous, iterative; fine: interleave (default, Algorithm 8), "
        "unified, ranked, iterative",
    )
    p.add_argument(
        "--order", default="ascending", help="fine: ascending, descending or random (ablation)"
    )
    p.add_argument("--budget", default="params=0.25", help="params=F[:non_embedding] or count=N")
    p.add_argument("--protect-first", type=int, default=1)
    p.add_argument("--protect-last", type=int, default=1)
    p.add_argument("--tokens", default="all", help="angular metrics over all or last tokens")
    p.add_argument("--heads", type=float, default=0.0, help="fraction of heads (KV groups)")
    p.add_argument("--neurons", type=float, default=0.0, help="fraction of MLP neurons")
    p.add_argument(
        "--width-importance",
        default="magnitude",
        help="magnitude, taylor, output_norm, activation_frequency",
    )
    p.add_argument("--min-heads", type=int, default=1, help="KV groups kept per layer")
    p.add_argument("--round-to", type=int, default=1, help="kept MLP width multiple")
    p.add_argument("--tau", type=float, default=0.01, help="activation_frequency threshold")
    p.add_argument("--width-scope", default="global", help="global or per_layer selection")
    p.add_argument(
        "--width-steps", type=int, default=1, help="iterative width pruning: k prune/re-score steps"
    )


def _calib_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", default="wiki", help="packaged text name or a text file")
    p.add_argument("--n-samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--perplexity", action="store_true", help="held-out perplexity")
    p.add_argument("--latency", action="store_true", help="prefill ms, decode tok/s, RSS")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--stride", type=int, default=None, help="default: the window")
    p.add_argument("--bos", action="store_true", help="prepend BOS to every window")
    p.add_argument("--max-windows", type=int, default=8)
    p.add_argument("--eval-text", default="wiki", help="held-out text: packaged name or a file")
    p.add_argument(
        "--tasks",
        default="",
        help="zero-shot tasks via lm-eval, offline: piqa,arc_easy,arc_challenge,hellaswag,"
        "sciq,openbookqa",
    )
    p.add_argument("--task-limit", type=int, default=None, help="examples per task (default all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)


def _train_args(p: argparse.ArgumentParser) -> None:
    """Recovery knobs (defaults: the lesson's, scaled to a few hundred CPU steps)."""
    p.add_argument("--loss", default="lm", help="lm (text) or kd (distil the dense teacher)")
    p.add_argument("--lr", type=float, default=None, help="default 2e-5 full, 2e-4 LoRA")
    p.add_argument("--max-steps", type=int, default=200, help="optimizer steps at most")
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the text at most")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-time budget")
    p.add_argument("--train-batch-size", type=int, default=4)
    p.add_argument("--train-seq-len", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=20, help="held-out loss every N steps")
    p.add_argument("--patience", type=int, default=3, help="early stop after N bad evals")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0, help="KD softmax temperature")
    p.add_argument("--lm-weight", type=float, default=0.0, help="KD: + weight × LM loss")


def _out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` → ``("a", "b", "c")``: the CLI's comma-separated options."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def make_config(args: argparse.Namespace):
    from depthcut.config import Budget, PruneConfig

    units = comma_list(args.units)
    return PruneConfig(
        units=units,
        importance=args.importance,
        budget=Budget.parse(args.budget),
        strategy=args.strategy or ("interleave" if "fine" in units else "ranked"),
        order=args.order,
        protect_first=args.protect_first,
        protect_last=args.protect_last,
        tokens=args.tokens,
        heads=args.heads,
        neurons=args.neurons,
        width_importance=args.width_importance,
        min_heads=args.min_heads,
        round_to=args.round_to,
        tau=args.tau,
        width_steps=args.width_steps,
        width_scope=args.width_scope,
    )


def eval_settings(args: argparse.Namespace, default_ppl: bool = False):
    from depthcut.eval.run import EvalSettings
    from depthcut.eval.zeroshot import TASKS

    unknown = [t for t in comma_list(args.tasks) if t not in TASKS]
    if unknown:
        raise DepthcutError(f"unknown task {unknown[0]!r}; offline tasks: {', '.join(TASKS)}")
    want_ppl = args.perplexity or (default_ppl and not args.latency and not args.tasks)
    return EvalSettings(
        perplexity=want_ppl,
        source=args.eval_text,
        tasks=comma_list(args.tasks),
        task_limit=args.task_limit,
        latency=args.latency,
        window=args.window,
        stride=args.stride or args.window,
        bos=args.bos,
        max_windows=args.max_windows,
        repeats=args.repeats,
        threads=args.threads,
    )


def _load(args: argparse.Namespace, name: str, need_tokenizer: bool = True):
    """(model, tokenizer): an encoder with ``--encoder``, else a causal LM (``--tokenizer``)."""
    from depthcut.models import load_encoder, load_model

    if getattr(args, "encoder", False):
        return load_encoder(name)
    return load_model(name, tokenizer=args.tokenizer, need_tokenizer=need_tokenizer)


def cmd_inspect(args: argparse.Namespace) -> None:
    from depthcut.inspect import inspect_text

    model, _ = _load(args, args.model, need_tokenizer=False)
    print(inspect_text(model))


def _calibration(args, tok):
    from depthcut.data import calibration

    return calibration(tok, args.calib, args.n_samples, args.seq_len, args.batch_size)


def cmd_score(args: argparse.Namespace) -> None:
    from depthcut.api import score

    cfg = make_config(args)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise DepthcutError(f"{out} exists (use --overwrite to replace it)")
    model, tok = _load(args, args.model)
    scores = score(model, cfg, _calibration(args, tok))
    scores.save(out)
    width = {
        k: sum(i["size"] for i in v["layers"].values()) for k, v in (scores.width or {}).items()
    }
    what = ", ".join(
        [f"{len(scores.units)} depth units"] + [f"{n} {k} units" for k, n in width.items()]
    )
    print(f"scores of {what} -> {out} ({scores.cost['seconds']:.1f} s)")


def cmd_plan(args: argparse.Namespace) -> None:
    from depthcut.api import plan
    from depthcut.scores import Scores

    scores = Scores.load(_existing(args.scores))
    the_plan = plan(scores, make_config(args))
    print(the_plan.summary())
    if args.out:
        the_plan.save(args.out)


def cmd_apply(args: argparse.Namespace) -> None:
    from depthcut.api import apply
    from depthcut.io import prepare_output, save
    from depthcut.planning.plan import Plan

    the_plan = Plan.load(_existing(args.plan))
    prepare_output(args.out, args.overwrite)
    model, tok = _load(args, args.model)
    pruned = apply(model, the_plan, inplace=True)
    save(pruned, the_plan, args.out, tok, overwrite=args.overwrite)
    print(f"pruned model -> {args.out}")


def make_recipe(args: argparse.Namespace):
    """The recipe of a prune run: from ``--recipe FILE``, else from the flags."""
    from depthcut.quantize import QuantizeConfig
    from depthcut.recipe import Recipe
    from depthcut.recover.job import recover_config

    if args.recipe:
        return Recipe.load(args.recipe)
    recover = recover_config(args) if args.recover else None
    quant = QuantizeConfig(args.quantize) if args.quantize else None
    return Recipe(make_config(args), args.steps, recover, quant)


def cmd_prune(args: argparse.Namespace) -> None:
    from depthcut.pipeline import prune_to_dir

    recipe = make_recipe(args)
    settings = eval_settings(args) if (args.perplexity or args.latency or args.tasks) else None
    prune_to_dir(args.model, recipe, args, settings)


def cmd_recover(args: argparse.Namespace) -> None:
    from depthcut.recover.job import recover_dir

    out = recover_dir(args, eval_settings(args, default_ppl=True))
    print(f"recovered model -> {out}")


def cmd_quantize(args: argparse.Namespace) -> None:
    from depthcut.quantize_job import quantize_dir

    out = quantize_dir(args, eval_settings(args, default_ppl=True))
    if out is not None:
        print(f"quantized model -> {out}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from depthcut.sweep_job import sweep_dir

    out = sweep_dir(args, eval_settings(args, default_ppl=True))
    print(f"sweep -> {out}/sweep.json (+ sweep.md, curves)")


def cmd_explain(args: argparse.Namespace) -> None:
    from depthcut.explain import explain_dir

    out = explain_dir(args, eval_settings(args, default_ppl=True))
    print(f"explanation -> {out}")


def cmd_report(args: argparse.Namespace) -> None:
    from depthcut.report.html import write_generations, write_html

    if args.generate:
        write_generations(args.run, args.base, tokenizer=args.tokenizer)
    print(f"report -> {write_html(args.run, args.sweep)}")


def cmd_eval(args: argparse.Namespace) -> None:
    from depthcut.eval.run import evaluate_models
    from depthcut.report.write import comparison_rows, table

    model, tok = _load(args, args.model)
    models = {"after": model}
    if args.base:
        models = {"before": _load(args, args.base, need_tokenizer=False)[0], "after": model}
    results = evaluate_models(models, tok, eval_settings(args, default_ppl=True))
    if args.base:
        print(table(comparison_rows(results["before"], results["after"])))
    else:
        print(json.dumps(results["after"], indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def cmd_bench(args: argparse.Namespace) -> None:
    args.perplexity = False
    args.latency = True
    cmd_eval(args)


def _existing(path: str) -> Path:
    if not Path(path).is_file():
        raise DepthcutError(f"{path}: no such file")
    return Path(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthcut", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("inspect", help="blocks, units and parameter counts of a model")
    p.add_argument("model", help="packaged name (smollm2-135m) or local model directory")
    p.add_argument("--encoder", action="store_true", help="an encoder (e.g. minilm-l6)")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("score", help="score units on calibration text -> scores.json")
    p.add_argument("model")
    _config_args(p), _calib_args(p)
    p.add_argument("--out", default="scores.json")
    p.add_argument("--encoder", action="store_true", help="an encoder (e.g. minilm-l6)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("plan", help="plan removals from scores.json under a budget")
    p.add_argument("scores")
    _config_args(p)
    p.add_argument("--out", default=None, help="write plan.json here")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("apply", help="apply plan.json to a model and save it")
    p.add_argument("model"), p.add_argument("plan")
    _out_args(p)
    p.add_argument("--encoder", action="store_true", help="an encoder (e.g. minilm-l6)")
    p.set_defaults(func=cmd_apply)
    p = sub.add_parser("prune", help="score, plan, apply, save and report in one go")
    p.add_argument("model")
    _config_args(p), _calib_args(p), _eval_args(p), _out_args(p)
    p.add_argument("--encoder", action="store_true", help="an encoder (e.g. minilm-l6): width")
    p.add_argument("--steps", type=int, default=1, help="k rounds of prune → recover → re-score")
    p.add_argument("--recover", default=None, help="lora or full: recover after every round")
    p.add_argument("--quantize", default=None, help="quantize last: dynamic_int8")
    p.add_argument("--recipe", default=None, help="recipe.json (prune/steps/recover/quantize)")
    _train_args(p)
    p.set_defaults(func=cmd_prune)
    p = sub.add_parser("recover", help="fine-tune a pruned run (LoRA / full / distillation)")
    p.add_argument("run", help="a directory written by prune/apply")
    p.add_argument("--method", default="lora", help="lora or full")
    p.add_argument("--teacher", default=None, help="dense model for --loss kd (default: source)")
    p.add_argument("--calib", default="wiki", help="training text: packaged name or a file")
    _train_args(p), _eval_args(p), _out_args(p)
    p.set_defaults(func=cmd_recover)
    p = sub.add_parser("quantize", help="quantize a pruned run (int8 on CPU; AWQ/GPTQ recipe)")
    p.add_argument("run", help="a directory written by prune/apply/recover")
    p.add_argument(
        "--method", default="dynamic_int8", help="dynamic_int8, torchao_int8_weight_only, gptq, awq"
    )
    p.add_argument("--skip", nargs="*", default=[], help="module path suffixes kept float")
    p.add_argument("--group-size", type=int, default=128, help="gptq/awq input-width group")
    p.add_argument(
        "--quantize-mlp-out",
        action="store_true",
        help="int8 the MLP output projections too (kept fp32 by default: activation outliers)",
    )
    p.add_argument("--out", default=None, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _eval_args(p)
    p.set_defaults(func=cmd_quantize)
    p = sub.add_parser("sweep", help="methods × budgets trade-off curves (resumable)")
    p.add_argument("model")
    p.add_argument("--methods", default="random,bi,gromov,iterative,sublayer")
    p.add_argument("--budgets", default="0.1,0.2,0.3,0.4", help="fractions of params")
    p.add_argument("--count", default="all", help="budgets of all or non_embedding params")
    p.add_argument("--protect-first", type=int, default=1)
    p.add_argument("--protect-last", type=int, default=1)
    p.add_argument("--out", required=True, help="sweep directory (resumed if it exists)")
    p.add_argument("--overwrite", action="store_true", help="restart a sweep with new settings")
    _calib_args(p), _eval_args(p)
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("explain", help="leave-one-out perplexity per unit; pair dependency")
    p.add_argument("model")
    p.add_argument("--units", default="attention,mlp", help="unit kinds to remove one by one")
    p.add_argument("--pairs", default="", help="e.g. mlp:21+mlp:22,attention:3+attention:4")
    _eval_args(p), _out_args(p)
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("report", help="self-contained report.html of a prune output")
    p.add_argument("run", help="a directory written by depthcut prune")
    p.add_argument("--sweep", default=None, help="a sweep directory whose curves to include")
    p.add_argument("--generate", action="store_true", help="greedy samples before/after")
    p.add_argument("--base", default=None, help="source model for the 'before' samples")
    p.set_defaults(func=cmd_report)
    for verb, func, text in (
        ("eval", cmd_eval, "perplexity / latency"),
        ("bench", cmd_bench, "latency, interleaved with --base"),
    ):
        p = sub.add_parser(verb, help=text + " (before/after table with --base)")
        p.add_argument("model")
        p.add_argument("--base", default=None, help="the unpruned model, for a before/after table")
        p.add_argument("--json", default=None, help="also write the results here")
        _eval_args(p)
        p.set_defaults(func=func)
    _common_args(sub.choices)
    return parser


NO_MODEL_VERBS = ("plan",)


def _common_args(verbs: dict[str, argparse.ArgumentParser]) -> None:
    """``--verbose`` on every verb; ``--tokenizer`` on every verb that loads a causal LM."""
    for verb, p in verbs.items():
        p.add_argument("--verbose", action="store_true", help="show library logs and warnings")
        if verb not in NO_MODEL_VERBS:
            p.add_argument(
                "--tokenizer",
                default=None,
                help="tokenizer directory or packaged name, for a model directory without one",
            )


def main(argv: list[str] | None = None) -> int:
    from depthcut.verbosity import configure

    args = build_parser().parse_args(argv)
    configure(args.verbose)
    try:
        args.func(args)
    except DepthcutError as err:
        print(f"depthcut: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("depthcut: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
