"""Command line: one function per verb. Each turns its parsed options into a typed job config
(``depthcut.jobs``) or an API call; bad input → one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from depthcut.errors import DepthcutError

DEFAULT_BUDGET = "params=0.25"  # --budget when none is given


def comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` → ``("a", "b", "c")``: the CLI's comma-separated options."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def resolve_units(args: argparse.Namespace, scored: dict) -> tuple[Any, ...]:
    """``--units`` as given, else the scored units (``plan``), else none: PruneConfig's
    default (``PruneConfig.default_units``); PruneConfig checks the names."""
    if args.units:
        return comma_list(args.units)
    return tuple(scored.get("units") or ())


def make_config(args: argparse.Namespace, scored: dict | None = None):
    """The PruneConfig of the flags; an omitted flag takes the value ``scored`` (the config the
    scores were made with) holds, else PruneConfig's own default (the recommended method)."""
    from depthcut.config import Budget, PruneConfig

    scored = scored or {}
    units = resolve_units(args, scored)

    def pick(name: str) -> Any:  # a name PruneConfig checks
        return getattr(args, name) or scored.get(name) or getattr(PruneConfig, name)

    return PruneConfig(
        units=units,
        importance=pick("importance"),
        budget=Budget.parse_all(args.budget or [DEFAULT_BUDGET], args.budget_mode),
        strategy=args.strategy,
        order=args.order,
        protect_first=args.protect_first,
        protect_last=args.protect_last,
        tokens=args.tokens,
        heads=args.heads,
        neurons=args.neurons,
        width_importance=pick("width_importance"),
        min_heads=args.min_heads,
        round_to=args.round_to,
        tau=args.tau,
        width_steps=args.width_steps,
        width_scope=args.width_scope,
        repair=args.repair,
    )


def eval_settings(args: argparse.Namespace, default_ppl: bool = False):
    from depthcut.eval.run import EvalSettings
    from depthcut.eval.zeroshot import TASKS

    unknown = [t for t in comma_list(args.tasks) if t not in TASKS]
    if unknown:
        raise DepthcutError(f"unknown task {unknown[0]!r}; offline tasks: {', '.join(TASKS)}")
    if args.tasks:
        from depthcut.extras import require

        require("lm_eval")  # before any expensive work
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


def cmd_compare(args: argparse.Namespace) -> None:
    from depthcut.report.runs import runs_table

    print(runs_table([Path(p) for p in args.runs]))


def cmd_inspect(args: argparse.Namespace) -> None:
    from depthcut.inspect import inspect_text

    model, _ = model_ref(args, args.model).load(need_tokenizer=False)
    print(inspect_text(model))


def cmd_score(args: argparse.Namespace) -> None:
    from depthcut import parallel
    from depthcut.api import score

    cfg = make_config(args)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise DepthcutError(f"{out} exists (use --overwrite to replace it)")
    parallel.init_from_env()  # under torchrun: each process scores a share of the rows
    model, tok = model_ref(args, args.model).load()
    scores = score(model, cfg, calib_spec(args).sized(model, cfg).data(tok))
    if parallel.world()[0] != 0:
        return  # rank 0 writes the combined scores
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

    scores = Scores.load(args.scores)
    the_plan = plan(scores, make_config(args, scores.config))
    print(the_plan.summary())
    if args.out:
        the_plan.save(args.out)


def cmd_apply(args: argparse.Namespace) -> None:
    from depthcut.api import apply, check_applies
    from depthcut.io import prepare_output, save
    from depthcut.planning.plan import Plan

    the_plan = Plan.load(args.plan)
    prepare_output(args.out, args.overwrite)
    model, tok = model_ref(args, args.model).load()
    recorded = the_plan.run.get("config", {})
    method = recorded.get("repair", "none") if args.repair == "auto" else args.repair
    calib = None
    if method not in ("none", "auto"):
        from depthcut.config import PruneConfig

        check_applies(model, the_plan)  # before calibration is read for its repair
        the_plan.run["config"] = {**recorded, "repair": method}
        cfg = PruneConfig.from_dict(the_plan.run["config"])
        calib = calib_spec(args).sized(model, cfg).data(tok)
    pruned = apply(model, the_plan, calib, inplace=True)
    save(pruned, the_plan, args.out, tok, overwrite=args.overwrite)
    print(f"pruned model -> {args.out}")


def frontier_budgets(args: argparse.Namespace) -> list:
    """``--budgets`` as one ``Budgets`` per frontier point, checked before any work."""
    from depthcut.errors import ConfigError
    from depthcut.search.budgets import Budgets

    points = [Budgets.parse(p.split("+"), args.budget_mode) for p in comma_list(args.budgets)]
    if len({p.label for p in points}) != len(points):
        raise ConfigError(f"--budgets {args.budgets!r} names a point twice: give each once")
    if args.k < 1:
        raise ConfigError(f"--k {args.k}: assemble and measure at least one solution")
    if min(args.protect_first, args.protect_last) < 0:
        raise ConfigError(
            f"--protect-first {args.protect_first} --protect-last {args.protect_last}: "
            "give counts of blocks >= 0"
        )
    return points


def frontier_curve(rows: dict) -> dict[str, list[tuple[float, float]]]:
    """{"joint": [(measured decode speed-up, held-back perplexity)]} of a frontier's points."""
    out = []
    for row in rows.values():
        m = row["measured"]
        out.append((1.0 / max(1.0 - m["saved"], 1e-9), m["ppl"]))
    return {"joint": out}


def dense_ppl(rows: dict) -> float:
    return next(iter(rows.values()))["dense_ppl"]


def cmd_frontier(args: argparse.Namespace) -> None:
    import json

    from depthcut.api import frontier
    from depthcut.config import AUTO, PruneConfig
    from depthcut.formats.runtime import make_runtime, parse_runtime, require_runtime
    from depthcut.io import atomic_dir, prepare_output
    from depthcut.report.curves import plot_frontier
    from depthcut.search.library import OptionTable, check_runtime

    points = frontier_budgets(args)
    timer = parse_runtime(args.runtime)[0]
    table = OptionTable.load(args.table) if args.table else None
    if table is not None:
        check_runtime(table, timer)
    require_runtime(args.runtime)
    out = prepare_output(args.out, args.overwrite)
    model, tok = model_ref(args, args.model).load()
    runtime = make_runtime(args.runtime, tok, model)
    cfg = PruneConfig(units=(AUTO,), budget=points[0].to_budget(), repair="ls")
    calib = calib_spec(args).sized(model, cfg).held_back_too(args.n_samples is None).data(tok)
    protect = (args.protect_first, args.protect_last)
    table, plans = frontier(model, calib, points, table, args.k, runtime=runtime, protect=protect)

    def write(folder):
        table.save(folder / "options.json")
        (folder / "plans").mkdir()
        rows = {}
        for label, plan in plans.items():
            plan.save(folder / "plans" / f"{label}.json")
            rows[label] = plan.run["search"]
        text = json.dumps({"model": args.model, "points": rows}, indent=1)
        (folder / "frontier.json").write_text(text + "\n", encoding="utf-8")
        plot_frontier(frontier_curve(rows), dense_ppl(rows), folder / "frontier.png")

    atomic_dir(out, write, args.overwrite)
    for label, plan in plans.items():
        m = plan.run["search"]["measured"]
        print(
            f"{label}: decode time −{m['saved']:.1%} measured (−{m['predicted']:.1%} "
            f"predicted), KL {m['kl']:.4f} -> {out}/plans/{label}.json"
        )


def recover_config(args: argparse.Namespace):
    from depthcut.recovery.config import RecoverConfig

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
        teacher_topk=args.teacher_topk,
        save_every=args.save_every,
        gradient_checkpointing=args.gradient_checkpointing,
    )


def make_recipe(args: argparse.Namespace):
    """The recipe of a prune run: from ``--recipe FILE``, else from the flags."""
    from depthcut.quantization import QuantizeConfig
    from depthcut.recipe import Recipe

    if args.recipe:
        return Recipe.load(args.recipe)
    recover = recover_config(args) if args.recover else None
    quant = QuantizeConfig(args.quantize) if args.quantize else None
    return Recipe(make_config(args), args.steps, recover, quant)


def model_ref(args: argparse.Namespace, name: str):
    from depthcut.jobs import ModelRef

    encoder = getattr(args, "encoder", False)
    return ModelRef(name, args.tokenizer, encoder, args.device, args.dtype, args.max_memory)


def calib_spec(args: argparse.Namespace):
    from depthcut.jobs import CalibSpec

    return CalibSpec(args.calib, args.n_samples, args.seq_len, args.batch_size)


def output(args: argparse.Namespace):
    from depthcut.jobs import Output

    return Output(Path(args.out), args.overwrite) if args.out else None


def export_request(text: str | None) -> tuple[str, str | None] | None:
    """``--export gguf:q4_k_m`` → ("gguf", "q4_k_m"), checked before any work."""
    if not text:
        return None
    from depthcut.formats.run import check_request

    fmt, _, quant = text.partition(":")
    check_request(fmt, quant or None)
    return fmt, quant or None


def cmd_prune(args: argparse.Namespace) -> None:
    from depthcut.jobs import PruneJob, run_prune

    export = export_request(args.export)
    wanted = args.perplexity or args.latency or args.tasks
    job = PruneJob(
        model_ref(args, args.model),
        make_recipe(args),
        output(args),
        calib_spec(args),
        eval_settings(args) if wanted else None,
        args.eval_text,
        args.streaming,
        args.resume,
        args.runtime,
    )
    run_prune(job)
    if export is not None:
        from depthcut.formats.run import export_run

        fmt, quant = export
        out = export_run(args.out, fmt, Path(args.out) / fmt, quant, overwrite=args.overwrite)
        print(f"{fmt} export -> {out}")


def cmd_recover(args: argparse.Namespace) -> None:
    from depthcut.jobs import RecoverJob, run_recover
    from depthcut.recovery.config import rank

    job = RecoverJob(
        model_ref(args, args.run),
        recover_config(args),
        output(args),
        args.teacher,
        eval_settings(args, default_ppl=True),
        resume=args.resume,
        teacher_targets=args.teacher_targets,
        stream_teacher=args.stream_teacher,
    )
    out = run_recover(job)
    if rank() == 0:  # under torchrun the first process saved it
        print(f"recovered model -> {out}")


def cmd_quantize(args: argparse.Namespace) -> None:
    from depthcut.config import QUANTIZE_METHODS
    from depthcut.jobs import QuantizeJob, run_quantize

    if args.method not in QUANTIZE_METHODS:
        raise DepthcutError(
            f"quantize method {args.method!r}; choose one of {', '.join(QUANTIZE_METHODS)}"
        )

    if args.method.startswith("gguf-"):
        from depthcut.formats.llamacpp import IMATRIX, Imatrix
        from depthcut.formats.run import export_run

        if not args.out:
            raise DepthcutError("--method gguf-*: give --out, the directory of the GGUF file")
        quant = args.method.removeprefix("gguf-")
        text = None
        if quant.endswith(IMATRIX):  # the calibration flags matter to the matrix only
            text = Imatrix(args.calib, args.n_samples or Imatrix.chunks, args.seq_len)
        gguf = export_run(args.run, "gguf", args.out, quant, overwrite=args.overwrite, imatrix=text)
        print(f"GGUF {quant} -> {gguf}")
        return

    job = QuantizeJob(
        model_ref(args, args.run),
        args.method,
        output(args),
        tuple(args.skip),
        not args.quantize_mlp_out,
        args.group_size,
        eval_settings(args, default_ppl=True),
        calib_spec(args),
    )
    out = run_quantize(job)
    if out is not None:
        print(f"quantized model -> {out}")


def cmd_export(args: argparse.Namespace) -> None:
    from depthcut.formats.run import export_run

    out = export_run(args.run, args.format, args.out, args.quant, args.verify, args.overwrite)
    print(f"{args.format} export -> {out}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from depthcut.jobs import SweepJob, run_sweep_job
    from depthcut.sweep import SweepConfig

    sweep = SweepConfig(
        methods=comma_list(args.methods),
        budgets=tuple(float(b) for b in comma_list(args.budgets)),
        count=args.count,
        protect_first=args.protect_first,
        protect_last=args.protect_last,
        latency=args.latency,
        tasks=comma_list(args.tasks),
        task_limit=args.task_limit,
    )
    settings = eval_settings(args, default_ppl=True)
    job = SweepJob(model_ref(args, args.model), sweep, output(args), calib_spec(args), settings)
    out = run_sweep_job(job)
    print(f"sweep -> {out}/sweep.json (+ sweep.md, curves)")


def cmd_explain(args: argparse.Namespace) -> None:
    from depthcut.jobs import ExplainJob, run_explain

    job = ExplainJob(
        model_ref(args, args.model),
        output(args),
        comma_list(args.units),
        comma_list(args.pairs),
        eval_settings(args, default_ppl=True),
    )
    print(f"explanation -> {run_explain(job)}")


def cmd_report(args: argparse.Namespace) -> None:
    from depthcut.report.html import write_generations, write_html

    if args.generate:
        write_generations(args.run, args.base, tokenizer=args.tokenizer)
    print(f"report -> {write_html(args.run, args.sweep)}")


def cmd_eval(args: argparse.Namespace) -> None:
    from depthcut.eval.run import evaluate_models
    from depthcut.report.write import comparison

    model, tok = model_ref(args, args.model).load()
    models = {"after": model}
    if args.base:
        models = {"before": model_ref(args, args.base).load(False)[0], "after": model}
    results = evaluate_models(models, tok, eval_settings(args, default_ppl=True))
    if args.base:
        print(comparison(results["before"], results["after"]))
    else:
        print(json.dumps(results["after"], indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def cmd_bench(args: argparse.Namespace) -> None:
    args.perplexity = False
    args.latency = True
    cmd_eval(args)
