"""The whole pipeline on the real packaged SmolLM2-135M, step by step: dense → pruned (the
default: 25% of the non-embedding parameters as MLP neurons ranked by ls, kept widths rounded
to multiples of 64) → repaired (its ls refit) → recovered (LoRA r=16 + distillation from the
dense model's stored top-64 targets, a fixed number of steps) → 4-bit: AWQ and GPTQ
(llm-compressor, W4A16, group 64: the hidden size 576 is not a multiple of 128) and llama.cpp's
Q4_K_M, without and with its importance matrix of 64 × 256 calibration tokens.

    python benchmarks/bench_pipeline.py --steps 90
    python benchmarks/bench_pipeline.py --model qwen2.5-coder-1.5b --steps 20 --group 128 \
        --round-to 256

On the 1.5B the models are built one after another and freed (the dense model is repaired in
place once its GGUF files, its reference log-probabilities and the teacher's targets exist), so
the run peaks near two float32 copies rather than four; each finished step rewrites the
results file, marked incomplete until the last one. ``--keep DIR`` keeps the scratch folder
(the GGUF files, the saved recovered run); after a stop, the same command with ``--resume``
measures the steps still missing from what that folder holds.

Columns: held-out perplexity and mean next-token KL to the dense model (8 × 512 evaluation
tokens, PyTorch; AWQ / GPTQ perplexity from the reloaded compressed-tensors model in
llm-compressor's environment, same windows; Q4_K_M from llama.cpp's own logits on 4 × 512
tokens, beside its float16 export on the same windows), size on disk (float16 for the PyTorch
rows, the files for the rest), llama.cpp decode tokens/s (2 threads, medians of 3 interleaved
rounds) where the format runs there. Writes results/pipeline_smollm2.json
(pipeline_qwen2.json for the 1.5B)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import depthcut as dc
from bench_llamacpp import DECODE, MEASURE, PREFILL, ROUNDS, THREADS
from bench_quality import WINDOW, WINDOWS, held_out, reference
from depthcut.data import evaluation_tokens
from depthcut.errors import ConfigError
from depthcut.eval.run import EvalSettings
from depthcut.formats.gguf_file import gguf_name, write_gguf
from depthcut.jobs import CalibSpec, ModelRef, Output, QuantizeJob, run_quantize
from depthcut.models import load_tokenizer, resolve
from depthcut.recovery.config import RecoverConfig
from depthcut.recovery.run import live_targets, recover, recovery_data
from results_file import FLAG_NOTE, RESULTS, commit, flag, this_command, today, write

SHORT = {"smollm2-135m": "smollm2", "qwen2.5-coder-1.5b": "qwen2"}
RECOVERED = "recovered (LoRA + top-64 KD)"


def f16_mb(model) -> float:
    return 2 * sum(p.numel() for p in model.parameters()) / 1e6


def default_config(round_to: int) -> dc.PruneConfig:
    """The default at 25% of the non-embedding parameters, kept MLP widths rounded to
    ``round_to`` (AWQ / GPTQ need every Linear input width to be a multiple of their group)."""
    budget = dc.Budget(params=0.25, count="non_embedding", mode="nearest")
    return dc.PruneConfig(
        units=("neuron",), width_importance="ls", budget=budget, round_to=round_to
    )


def calibration(model, tok, cfg: dc.PruneConfig):
    """12 windows of 256 tokens (SmolLM2's pipeline), or as many as the ls refit needs (the
    1.5B's 8,960-wide down-projections need 68), sized as ``depthcut prune`` sizes them."""
    try:
        spec = CalibSpec(n_samples=12).sized(model, cfg.resolved())
    except ConfigError:  # too few for the refit: the fewest that are enough
        spec = CalibSpec().sized(model, cfg.resolved())
    return dc.calibration(tok, spec.source, spec.n_samples, spec.seq_len, spec.batch_size)


def recovery_config(steps: int) -> RecoverConfig:
    """The recovery every pruned model of the benchmarks gets: LoRA with distillation from the
    dense model's stored top-64 targets, ``steps`` steps of 4 × 128 tokens. A fixed number of
    steps, not a time limit, so that a busy machine changes the seconds, not the result."""
    return RecoverConfig(
        method="lora", loss="kd", max_steps=steps, seq_len=128, eval_every=10, patience=99
    )


def log_gap_closed(before: float, after: float, dense: float) -> float:
    """The share of ``before``'s log-perplexity gap to ``dense`` that ``after`` closed."""
    return (math.log(before) - math.log(after)) / (math.log(before) - math.log(dense))


def row(model, ids, ref) -> dict:
    ppl, kl = held_out(model, ref, ids, None)
    return {"ppl": ppl, "kl": kl, "mb": f16_mb(model), "format": "PyTorch float16"}


QUANTS = ("f16", "q4_k_m", "q4_k_m+imatrix")


def gguf_file(scratch: Path, name: str, quant: str) -> tuple[str, Path]:
    """(row name, file) of ``name``'s GGUF export of type ``quant`` in ``scratch``."""
    label = quant.upper().replace("+IMATRIX", " + imatrix")
    folder = scratch / f"gguf-{name.split(' ')[0]}-{quant}"
    return f"{name}, GGUF {label}", folder / gguf_name(quant)


def write_ggufs(model, name: str, tok, scratch: Path) -> dict[str, str]:
    """``model`` in llama.cpp's float16, Q4_K_M and Q4_K_M + imatrix: {row name: file}."""
    files = {}
    for quant in QUANTS:
        row_name, path = gguf_file(scratch, name, quant)
        path.parent.mkdir()
        write_gguf(model, tok, path.parent, quant, summary=False)
        files[row_name] = str(path)
    return files


def gguf_rows(files: dict[str, str], tok, scratch: Path) -> dict:
    """Every GGUF file in llama.cpp: perplexity on 4 × 512 tokens, decode and prefill speed,
    all files interleaved round by round."""
    ids = evaluation_tokens(tok, "wiki", max_tokens=512 * 4)
    windows = [ids[i * 512 : (i + 1) * 512] for i in range(4)]
    spec = {"files": files, "threads": THREADS, "rounds": ROUNDS, "prefill": PREFILL}
    spec |= {"decode": DECODE, "windows": windows}
    (scratch / "spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-c", MEASURE, str(scratch / "spec.json")]
    res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return {
        name: {
            "ppl_llamacpp": r["ppl"],
            "kl": None,
            "mb": Path(files[name]).stat().st_size / 1e6,
            "format": "GGUF",
            "decode_tps": r["decode"],
            "prefill_tps": r["prefill"],
            "unreliable": max(r["spread"].values()) > 0.1,  # rounds spread over 10%
        }
        for name, r in res.items()
    }


def int4_rows(run: Path, methods: list[str], group: int, scratch: Path) -> dict:
    """AWQ and / or GPTQ of the saved recovered run through ``depthcut quantize``'s job."""
    rows = {}
    for method in methods:
        out = scratch / method
        job = QuantizeJob(
            ModelRef(str(run)),
            method,
            Output(out),
            group_size=group,
            evaluation=EvalSettings(window=WINDOW, stride=WINDOW, max_windows=WINDOWS),
            calibration=CalibSpec(n_samples=16),
        )
        run_quantize(job)
        report = json.loads((out / "quantize.json").read_text())
        rows[f"recovered + {method.upper()} (W4A16, g{group})"] = {
            "ppl": report["perplexity"]["quantized"],
            "float_ppl_there": report["perplexity"]["float"],
            "kl": None,
            "mb": report["quantized_mb"],
            "format": "compressed-tensors",
            "seconds": report["oneshot_seconds"],
        }
    return rows


def targets(rows: dict) -> dict:
    """The issue's targets, measured (those whose rows exist)."""
    rec, dense = rows[RECOVERED]["ppl"], rows["dense"]["ppl"]
    out = {
        "log_gap_closed_by_recovery": log_gap_closed(rows["repaired (ls)"]["ppl"], rec, dense),
        "log_gap_closed_from_unrepaired": log_gap_closed(rows["pruned"]["ppl"], rec, dense),
    }
    int4 = [r["ppl"] / rec - 1 for k, r in rows.items() if "W4A16" in k]
    if int4:
        out["int4_added_ppl"] = max(int4)
    final, dense_q4 = rows.get(f"{RECOVERED}, GGUF Q4_K_M"), rows.get("dense, GGUF Q4_K_M")
    if final and dense_q4:
        out |= {
            "smaller_than_dense_f16": rows["dense"]["mb"] / final["mb"],
            "decode_vs_dense_q4_k_m": final["decode_tps"] / dense_q4["decode_tps"],
            "decode_unreliable": bool(final.get("unreliable") or dense_q4.get("unreliable")),
        }
    imatrix = rows.get(f"{RECOVERED}, GGUF Q4_K_M + imatrix")
    if final and imatrix:
        out["q4_k_m_imatrix_ppl_vs_plain"] = imatrix["ppl_llamacpp"] / final["ppl_llamacpp"]
    return out


def doc_table(results: dict) -> str:
    """The documentation's table, from the results file."""
    lines = [
        f"`{results['command']}` ({results['date']}, commit {results['commit']}, "
        f"{results['hardware']['cores']}-core CPU, 2 threads)",
        "",
        *[
            f"Resumed by `{r['command']}` ({r['date']}, commit {r['commit']}): "
            f"{', '.join(r['steps']) or 'nothing left it could do'}.\n"
            for r in results.get("resumed", [])
        ],
        "| step | format | perplexity | KL to dense | MB on disk | llama.cpp decode tok/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in results["rows"].items():
        ppl = r.get("ppl") or r.get("ppl_llamacpp")
        note = "" if "ppl" in r else " (llama.cpp, 4×512)"
        kl = f"{r['kl']:.3f}" if r.get("kl") is not None else "—"
        tps = f"{r['decode_tps']:.0f}{flag(r)}" if "decode_tps" in r else "—"
        lines.append(f"| {name} | {r['format']} | {ppl:.2f}{note} | {kl} | {r['mb']:.0f} | {tps} |")
    flagged = any(flag(r) for r in results["rows"].values())
    if results.get("missing"):
        lines.append(f"\nNot measured in this run: {', '.join(results['missing'])}.")
    for step, error in results.get("failed", {}).items():
        lines.append(f"\nFailed in this run: {step} ({error}).")
    return "\n".join(lines + ([f"\n{FLAG_NOTE}"] if flagged else []))


class Results:
    """The results file, rewritten after every step (``missing`` lists the steps still to
    come), so that a run stopped part-way leaves what it measured."""

    def __init__(self, model: str, steps: list[str]):
        self.name, self.model, self.missing = f"pipeline_{SHORT[model]}", model, steps
        self.rows: dict = {}
        self.failed: dict[str, str] = {}
        self.head: dict | None = None  # the first run's command, commit and date when resumed
        self.resumed: list[dict] = []

    def resume(self, left_out: list[str]) -> None:
        """Continue the stopped run the results file records: its rows, failures and missing
        steps are kept, with this run named in ``resumed`` (``left_out``: what it cannot do)."""
        old = json.loads((RESULTS / f"{self.name}.json").read_text())
        if old["model"] != self.model or not old.get("missing"):
            raise ConfigError(f"{self.name}.json: no unfinished run of {self.model} to resume")
        self.rows, self.failed, self.missing = old["rows"], old["failed"], old["missing"]
        self.head = {k: old[k] for k in ("command", "commit", "date")}
        todo = [s for s in self.missing if s not in left_out]
        self.resumed = old.get("resumed", []) + [
            {"command": this_command(), "commit": commit(), "date": today(), "steps": todo}
        ]

    def attempt(self, step: str, work, default):
        """``work()``, or ``default`` with the step's error recorded (a step that fails, e.g.
        a 4-bit method on this model, is a result too: the run goes on to the next)."""
        try:
            return work()
        except Exception as err:  # noqa: BLE001 - recorded in the results file
            self.failed[step] = f"{type(err).__name__}: {err}"[:400]
            self.done(step, {})
            return default

    def measure(self, step: str, work) -> None:
        """The rows ``work()`` measures, or the step's error."""
        rows = self.attempt(step, work, None)
        if rows is not None:
            self.done(step, rows)

    def done(self, step: str, rows: dict) -> None:
        self.rows |= rows
        self.missing = [s for s in self.missing if s != step]
        fields = {"model": self.model, "rows": self.rows, "missing": self.missing}
        fields["failed"] = self.failed
        if self.resumed:
            fields["resumed"] = self.resumed
        if RECOVERED in self.rows:
            fields["targets"] = targets(self.rows)
        write(self.name, fields, head=self.head)
        print(f"{step}: {json.dumps(rows)}", flush=True)


def prune_and_recover(args, results: Results, scratch: Path) -> tuple[dict, Path, object]:
    """Dense → pruned → repaired → recovered rows, the dense GGUF files written on the way;
    returns (GGUF files, the saved recovered run, the tokenizer). The dense model is loaded
    here and repaired in place, so that nothing else holds it once it is deleted."""
    model, tok = dc.load_model(args.model)
    cfg = default_config(args.round_to)
    calib = calibration(model, tok, cfg)  # checked before any long work
    ids = evaluation_tokens(tok, "wiki", WINDOW * WINDOWS)
    ref = reference(model, ids, None)
    results.done("dense", {"dense": row(model, ids, ref)})
    plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg, model)
    pruned = dc.apply(model, plan)
    results.done("pruned", {"pruned": row(pruned, ids, ref)})
    del pruned
    files = results.attempt("dense GGUF", lambda m=model: write_ggufs(m, "dense", tok, scratch), {})
    rcfg = recovery_config(args.steps)  # ≈ 6 CPU-minutes on SmolLM2 at 90 steps
    data = recovery_data(tok, rcfg)
    teacher = live_targets(model, tok, data[0], rcfg.teacher_topk, progress=False)
    dc.repair(model, plan, calib, "ls", progress=False)
    repaired = dc.apply(model, plan, inplace=True)
    results.done("repaired", {"repaired (ls)": row(repaired, ids, ref)})
    recovered, history = recover(repaired, tok, rcfg, teacher, progress=False, data=data)
    del repaired, model
    brief = {k: history[k] for k in ("steps", "best_step", "seconds", "stopped")}
    results.done("recovered", {RECOVERED: row(recovered, ids, ref) | {"recovery": brief}})
    run = dc.save(recovered, [plan], scratch / "recovered", tok)  # before its GGUF files
    files |= results.attempt(
        "recovered GGUF", lambda: write_ggufs(recovered, RECOVERED, tok, scratch), {}
    )
    return files, run, tok


def resume_files(results: Results, scratch: Path, methods: list[str]):
    """What a stopped run left in ``scratch``: (its GGUF files, its saved recovered run or
    None, the tokenizer); ``results`` continues it, without what those files cannot give."""
    if not (scratch / "gguf-dense-f16").is_dir():
        raise ConfigError(f"--resume: {scratch} holds no GGUF files of a stopped run")
    every = [gguf_file(scratch, n, q) for n in ("dense", RECOVERED) for q in QUANTS]
    files = {row_name: str(path) for row_name, path in every if path.exists()}
    absent = [row_name for row_name, path in every if not path.exists()]
    run = scratch / "recovered"
    run = run if (run / "depthcut.json").exists() else None
    left_out = [] if run else methods
    results.resume(left_out)
    if "recovered" in results.missing:
        raise ConfigError("--resume: the stopped run did not reach recovery; run it again")
    if "llama.cpp" in results.missing:
        results.missing += [f"{a} (its file was not written)" for a in absent]
    return files, run, load_tokenizer(resolve(results.model))


def scratch_folder(args) -> contextlib.AbstractContextManager:
    """``--keep``'s folder (empty for a new run), else a temporary one."""
    if args.keep is None:
        return tempfile.TemporaryDirectory(
            prefix="bench-pipeline-", dir=os.environ.get("BENCH_TMP")
        )
    if args.resume and not args.keep.is_dir():
        raise ConfigError(f"--resume: {args.keep} does not exist")
    if not args.resume and args.keep.exists() and any(args.keep.iterdir()):
        raise ConfigError(f"--keep {args.keep}: not empty (add --resume to continue its run)")
    args.keep.mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(str(args.keep))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m", choices=sorted(SHORT))
    parser.add_argument("--steps", type=int, default=90, help="recovery steps (4 × 128 tokens)")
    parser.add_argument("--group", type=int, default=64, help="AWQ / GPTQ group size")
    parser.add_argument("--round-to", type=int, default=None, help="kept widths (default: group)")
    parser.add_argument("--int4", default="awq,gptq", help="llm-compressor methods, in order")
    parser.add_argument("--keep", type=Path, help="scratch folder kept (GGUF files, saved run)")
    parser.add_argument("--resume", action="store_true", help="go on from --keep's stopped run")
    parser.add_argument("--table", action="store_true", help="print the docs table and stop")
    args = parser.parse_args()
    name = f"pipeline_{SHORT[args.model]}"
    if args.table:
        print(doc_table(json.loads((RESULTS / f"{name}.json").read_text())))
        return
    if args.resume and args.keep is None:
        raise ConfigError("--resume needs --keep DIR: the folder the stopped run kept")
    args.round_to = args.round_to or args.group
    methods = [m for m in args.int4.split(",") if m]
    torch.set_num_threads(THREADS)
    results = Results(
        args.model, ["dense", "pruned", "repaired", "recovered", "llama.cpp", *methods]
    )
    with scratch_folder(args) as tmp:
        if args.resume:
            files, run, tok = resume_files(results, Path(tmp), methods)
        else:
            files, run, tok = prune_and_recover(args, results, Path(tmp))
        if "llama.cpp" in results.missing:
            results.measure("llama.cpp", lambda: gguf_rows(files, tok, Path(tmp)))
        for method in (m for m in methods if run and m in results.missing):
            results.measure(method, lambda m=method: int4_rows(run, [m], args.group, Path(tmp)))
    print(doc_table(json.loads((RESULTS / f"{name}.json").read_text())))


if __name__ == "__main__":
    main()
