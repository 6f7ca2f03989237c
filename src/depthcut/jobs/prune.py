"""``depthcut prune``: score → plan → apply → (eval) → save, one shot or as ``steps`` rounds
of prune → recover → re-score, quantized last if the recipe says so."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from depthcut import log
from depthcut.errors import DepthcutError
from depthcut.eval.run import EvalSettings
from depthcut.jobs.common import CalibSpec, ModelRef, Output
from depthcut.recipe import Recipe


@dataclass(frozen=True)
class PruneJob:
    """Prune ``model`` by ``recipe`` into ``out``; ``evaluation`` measures before/after;
    ``eval_text`` is the held-out text of iterative runs measured without ``evaluation``."""

    model: ModelRef
    recipe: Recipe
    out: Output
    calib: CalibSpec = field(default_factory=CalibSpec)
    evaluation: EvalSettings | None = None
    eval_text: str = "wiki"
    streaming: bool = False  # one block in memory at a time (depth units; ``depthcut.stream``)
    resume: bool = False  # streamed scores continue from the last block a killed run saved
    runtime: str = "torch"  # where the joint search times its options: torch, llamacpp[:TYPE]


def run_prune(job: PruneJob) -> Path:
    """The pruned model with scores, plan, report and recipe beside it; returns ``out``.

    >>> job = PruneJob(ModelRef("smollm2-135m"), Recipe(cfg), Output(Path("out/x")))
    >>> run_prune(job)  # doctest: +SKIP
    """
    from depthcut.api import joint_plan, plan, score
    from depthcut.report.write import comparison, write_report

    job.out.prepare()  # refuse before any expensive work
    streaming = job.streaming or _too_big(job.model)
    job = _resolve_repair(job, streaming)
    _check_repair(job, streaming)
    _check_runtime(job, streaming)
    if streaming:
        return _streamed(job)
    settings, recipe = job.evaluation, job.recipe
    if job.model.encoder and settings is not None:
        raise DepthcutError("--perplexity/--latency are for causal LMs, not --encoder models")
    model, tok = job.model.load()
    cfg = recipe.prune
    calib = _calibration(job, model, tok)
    if recipe.steps > 1 or recipe.recover is not None:
        return _iterative(model, tok, calib, job)
    if cfg.auto:
        from depthcut.formats.runtime import make_runtime

        runtime = make_runtime(job.runtime, tok, model)
        scores, the_plan, calib = joint_plan(model, cfg, calib, runtime=runtime)
    else:
        scores = score(model, cfg, calib)
        the_plan = plan(scores, cfg, model)
    log.result(the_plan.summary())
    fix = _repairer(cfg.repair, the_plan, calib)
    pruned, results = _prune_and_measure(model, the_plan, tok, settings, fix)
    log.result(comparison(results["before"], results["after"]))

    def extra(tmp: Path) -> None:
        scores.save(tmp / "scores.json")
        write_report(tmp, the_plan, scores, results["before"], results["after"])

    return _save(pruned, the_plan, job, tok, extra)


def _calibration(job: PruneJob, model, tok):
    """The calibration batches, sized for the repair (or a given size checked against it)
    before any scoring; an automatic size above the default is said in one line."""
    from depthcut.refit.needs import FLOOR_SAMPLES

    cfg = job.recipe.prune
    spec = job.calib.sized(model, cfg).held_back_too(cfg.auto and job.calib.n_samples is None)
    if job.calib.n_samples is None and spec.n_samples != FLOOR_SAMPLES:
        log.status(
            f"depthcut: calibration {spec.n_samples} × {spec.seq_len} tokens of "
            f"{spec.source} (sized for --repair ls on the model's widest layer)"
        )
    return spec.data(tok)


def _repairer(method: str, the_plan, calib):
    """In-place repair of a model for ``the_plan`` before it is applied (or nothing)."""
    from depthcut.api import repair

    def fix(model):
        if method != "none":
            repair(model, the_plan, calib, method)
        return model

    return fix


def _resolve_repair(job: PruneJob, streaming: bool) -> PruneJob:
    """The recipe with ``repair="auto"`` made concrete (``PruneConfig.resolved``), so the saved
    recipe says what ran; an automatic ls dropped because the model is streamed (the refit
    needs it in memory) is said in one line; an asked-for one is refused by ``_check_repair``."""
    recipe = job.recipe
    cfg = recipe.prune
    concrete = cfg.resolved(recipe.steps, streaming)
    if streaming and cfg.resolved(recipe.steps).repair != concrete.repair:
        log.status("depthcut: streamed, so no --repair (the ls refit needs the model in memory)")
    return replace(job, recipe=replace(recipe, prune=concrete))


def _check_repair(job: PruneJob, streaming: bool) -> None:
    """``--repair`` needs the model in memory: refuse streaming (chosen or automatic) before
    any work."""
    recipe = job.recipe
    if recipe.prune.auto and (recipe.steps > 1 or recipe.recover is not None):
        raise DepthcutError("--units auto prunes once: drop --steps / --recover (recover after)")
    if recipe.prune.repair == "none":
        return
    if streaming:
        raise DepthcutError(
            "--repair with --streaming (chosen or automatic) is not supported yet: drop --repair"
        )


def _check_runtime(job: PruneJob, streaming: bool) -> None:
    """A deployment runtime times the joint search in memory: refuse it elsewhere, and a
    missing binding, before any work."""
    from depthcut.formats.runtime import parse_runtime, require_runtime
    from depthcut.search.runtime import refuse_without_search

    name = parse_runtime(job.runtime)[0]
    if name == "torch":
        return
    refuse_without_search(name, job.recipe.prune.auto)
    if streaming:
        raise DepthcutError(f"--runtime {job.runtime}: the joint search runs in memory")
    require_runtime(job.runtime)


def _prune_and_measure(model, the_plan, tok, settings, fix) -> tuple:
    """(pruned model, {"before": …, "after": …}) holding one model copy: the dense model is
    measured first, then repaired (``fix``) and pruned in place. Latency compares the two
    interleaved in one run, so only ``--latency`` keeps a dense copy beside the pruned one."""
    import copy

    from depthcut.api import apply
    from depthcut.eval.run import evaluate_models, param_counts

    if settings is not None and settings.latency:
        pruned = apply(fix(copy.deepcopy(model)), the_plan, inplace=True)
        return pruned, evaluate_models({"before": model, "after": pruned}, tok, settings)
    measure = (
        param_counts
        if settings is None
        else (lambda m: evaluate_models({"m": m}, tok, settings)["m"])
    )
    before = measure(model)
    pruned = apply(fix(model), the_plan, inplace=True)
    return pruned, {"before": before, "after": measure(pruned)}


def _save(model, plans, job: PruneJob, tok, extra) -> Path:
    from depthcut.io import save
    from depthcut.quantization import quantize

    recipe = job.recipe
    meta: dict[str, Any] = {"source": job.model.source}
    if recipe.quantize is not None:
        model = quantize(model, recipe.quantize)
        meta["quantization"] = recipe.quantize.to_dict()

    def write_extra(tmp: Path) -> None:
        extra(tmp)
        recipe.save(tmp / "recipe.json")

    out = save(
        model, plans, job.out.path, tok, overwrite=job.out.overwrite, extra=write_extra, meta=meta
    )
    extras = sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".md", ".png"))
    log.status(f"depthcut: wrote {out} (model, {', '.join(extras)})")
    return out


def _iterative(model, tok, calib, job: PruneJob) -> Path:
    """k rounds of prune → (recover) → re-score; history.json and history.png beside."""
    from depthcut.eval.run import perplexity_fn
    from depthcut.recovery.loop import prune_recover_loop
    from depthcut.report.curves import plot_iterative
    from depthcut.report.write import iterative_markdown

    recipe = job.recipe
    if job.model.encoder:
        raise DepthcutError("--steps/--recover train causal LMs; not for --encoder models")
    ppl = perplexity_fn(tok, job.evaluation or EvalSettings(source=job.eval_text))
    pruned, plans, history = prune_recover_loop(
        model, tok, recipe.prune, calib, recipe.steps, recipe.recover, ppl
    )

    def extra(tmp: Path) -> None:
        (tmp / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        plot_iterative(history, tmp / "history.png")
        (tmp / "report.md").write_text(iterative_markdown(history, recipe.to_dict()))

    return _save(pruned, plans, job, tok, extra)


def _streamed(job: PruneJob) -> Path:
    """Score, plan and apply on disk with one block in memory (``--streaming``); with
    ``--perplexity`` the dense and the pruned model are measured streaming too."""
    from depthcut.api import plan
    from depthcut.card import write_card
    from depthcut.devices import resolve_device, resolve_dtype
    from depthcut.io import atomic_dir
    from depthcut.models import load_tokenizer, resolve
    from depthcut.report.write import comparison
    from depthcut.stream.apply import apply_on_disk
    from depthcut.stream.fine import stream_fine_model
    from depthcut.stream.score import check_resumable, check_streamable, stream_score
    from depthcut.stream.source import BlockSource

    recipe, settings = job.recipe, job.evaluation
    check_streamable(recipe.prune)
    _check_streamed_eval(job)
    if job.resume:
        check_resumable(recipe.prune)
    path = resolve(job.model.name)
    if (path / "depthcut.json").exists():
        raise DepthcutError(f"{path}: --streaming reads a plain checkpoint, not a depthcut run")
    tok = load_tokenizer(path, job.model.tokenizer)
    device = resolve_device(job.model.device)
    source = BlockSource(path, resolve_dtype(job.model.dtype, device), device)
    calib = job.calib.data(tok)
    checkpoint = _checkpoint(job, path, calib)
    scores = stream_score(source, recipe.prune, calib, checkpoint=checkpoint)
    traced = stream_fine_model(source) if recipe.prune.fine else None  # not a random skeleton
    the_plan = plan(scores, recipe.prune, traced)
    log.result(the_plan.summary())
    if settings is not None:
        results = _streamed_perplexity(source, the_plan, tok, settings)
        log.result(comparison(results["before"], results["after"]))

    def write(tmp: Path) -> None:
        how = apply_on_disk(source, the_plan, tmp, {"source": job.model.source})
        tok.save_pretrained(tmp)
        scores.save(tmp / "scores.json")
        recipe.save(tmp / "recipe.json")
        if settings is not None:
            (tmp / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
        write_card(tmp, job.out.path.name, [the_plan.to_dict()], {"source": job.model.source})
        log.status(f"depthcut: verified {job.out.path.name}: {how}")

    out = atomic_dir(job.out.prepare(), write, job.out.overwrite)
    if checkpoint is not None:
        checkpoint.discard()
    log.status(f"depthcut: wrote {out} (streamed: one block in memory at a time)")
    return out


def _checkpoint(job: PruneJob, path: Path, calib):
    """The per-block checkpoint of a streamed score beside ``--out`` (None for metrics that
    cannot resume); a fresh run (no ``--resume``) starts by discarding an old one."""
    from depthcut.errors import ConfigError
    from depthcut.stream.resume import Checkpoint, run_key
    from depthcut.stream.score import check_resumable

    try:
        check_resumable(job.recipe.prune)
    except ConfigError:
        return None
    out = job.out.path.resolve()
    key = run_key(path, job.recipe.prune, calib)
    checkpoint = Checkpoint(out.parent / f".{out.name}.scores-checkpoint.pt", key)
    if not job.resume:
        checkpoint.discard()
    return checkpoint


def _check_streamed_eval(job: PruneJob) -> None:
    settings, recipe = job.evaluation, job.recipe
    if recipe.steps > 1 or recipe.recover or recipe.quantize:
        raise DepthcutError(
            "--streaming scores, plans and writes the pruned checkpoint once: no "
            "--steps/--recover/--quantize (run them on the result in memory)"
        )
    if settings is not None and (settings.latency or settings.tasks):
        raise DepthcutError(
            "--streaming measures --perplexity only; measure latency and tasks with "
            "`depthcut eval OUT` on a machine that holds the pruned model"
        )


def _streamed_perplexity(source, the_plan, tok, settings: EvalSettings) -> dict:
    """{"before": …, "after": …} as the in-memory comparison table reads them: parameters
    from the plan, perplexity streamed for the dense model and for the plan applied."""
    from depthcut.data import evaluation_tokens
    from depthcut.stream.perplexity import stream_perplexity

    ids = evaluation_tokens(tok, settings.source, settings.window * settings.max_windows + 1)
    bos = settings.bos_id(tok)
    out = {}
    for name, p in (("before", None), ("after", the_plan)):
        result = stream_perplexity(
            source, ids, settings.window, settings.stride, bos, settings.max_windows, p
        )
        out[name] = {**_plan_params(the_plan, name == "after"), "perplexity": result.to_dict()}
    return out


def _plan_params(the_plan, pruned: bool) -> dict[str, int]:
    removed = the_plan.removed_params if pruned else 0
    return {
        "params_all": the_plan.model["params_all"] - removed,
        "params_non_embedding": the_plan.model["params_non_embedding"] - removed,
    }


def _too_big(model: ModelRef) -> bool:
    """True when the checkpoint does not fit ``--max-memory`` (it is then streamed); a limit
    below one block is refused."""
    from depthcut.devices import memory_bytes, parse_max_memory
    from depthcut.models import resolve
    from depthcut.stream.source import block_bytes

    limits = parse_max_memory(model.max_memory)
    if limits is None:
        return False
    path, budget = resolve(model.name), memory_bytes(limits)
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    if size <= budget:
        return False
    largest = max(block_bytes(path))
    if largest > budget:
        raise DepthcutError(
            f"--max-memory {model.max_memory} ({budget / 2**30:.3f} GiB) is smaller than one "
            f"block ({largest / 2**30:.3f} GiB)"
        )
    log.status(
        f"depthcut: {path.name} ({size / 2**30:.3f} GiB) does not fit --max-memory "
        f"({budget / 2**30:.3f} GiB): streaming it one block at a time"
    )
    return True
