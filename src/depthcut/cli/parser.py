"""The argument parser: shared option groups and one function per verb (only the cli package
sees argparse; each verb's options become a typed job config in ``commands``)."""

from __future__ import annotations

import argparse

from depthcut.cli import commands
from depthcut.config import GGUF_TYPES, INT4_METHODS, INT8_METHODS


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--units",
        default=None,
        help="comma list of block,attention,mlp,head,neuron; or 'fine' (attention regions and "
        "single Linear layers, thesis Chapter 3). Default: neuron (the recommended method: "
        "repair-aware MLP neurons + ls refit), or block when --importance/--strategy is given",
    )
    p.add_argument(
        "--importance",
        default=None,
        help="depth metric of block / sublayer units (default bi): bi, angular, gromov, kl, ce, "
        "ppl, ls (repair-aware); fine: angular, bi, "
        "taylor, kl, ce, ls (repair-aware; measured worse than angular, see README)",
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
    p.add_argument(
        "--budget",
        action="append",
        default=None,
        help=f"params=F[:non_embedding], count=N, latency=F (of the measured decode time), "
        f"prefill=F (of the measured prefill time of a 512-token prompt) or kv=F (of the KV "
        f"cache); repeat it for several at once (the joint search meets them all); default "
        f"{commands.DEFAULT_BUDGET}",
    )
    p.add_argument(
        "--budget-mode",
        default="at_least",
        help="at_least (default), at_most or nearest: the side of the target the plan lands on",
    )
    p.add_argument("--protect-first", type=int, default=1)
    p.add_argument("--protect-last", type=int, default=1)
    p.add_argument("--tokens", default="all", help="angular metrics over all or last tokens")
    p.add_argument("--heads", type=float, default=0.0, help="fraction of heads (KV groups)")
    p.add_argument("--neurons", type=float, default=0.0, help="fraction of MLP neurons")
    p.add_argument(
        "--width-importance",
        default=None,
        help="ls (default: repair-aware, what the consumer's least-squares refit cannot "
        "recover), magnitude, taylor, output_norm, activation_frequency",
    )
    p.add_argument("--min-heads", type=int, default=1, help="KV groups kept per layer")
    p.add_argument("--round-to", type=int, default=1, help="kept MLP width multiple")
    p.add_argument("--tau", type=float, default=0.01, help="activation_frequency threshold")
    p.add_argument("--width-scope", default="global", help="global or per_layer selection")
    p.add_argument(
        "--width-steps", type=int, default=1, help="iterative width pruning: k prune/re-score steps"
    )
    _repair_arg(p)


AUTO_REPAIR = "auto (default): ls for head / neuron / fine-grained plans, where it helps, none "
AUTO_REPAIR += "otherwise"


def _repair_arg(p: argparse.ArgumentParser, auto: str = AUTO_REPAIR) -> None:
    p.add_argument(
        "--repair",
        default="auto",
        help="none, ls or patch. ls: least-squares refit of kept weights after removal "
        "(block/sublayer runs, head/neuron consumers, fine-grained blocks' writers), no "
        "parameter added, never worse on held-back calibration text; patch: LinearPatch "
        f"(a d×d module on the stream after each removed run of blocks, a baseline); {auto}",
    )


def _calib_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", default="wiki", help="packaged text name or a text file")
    p.add_argument(
        "--n-samples",
        type=int,
        default=None,
        help="calibration windows (default: 16, or as many as --repair ls needs for the "
        "model's widest layer: half the windows fit, half check)",
    )
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--perplexity", action="store_true", help="held-out perplexity")
    p.add_argument("--latency", action="store_true", help="prefill ms, decode tok/s, RSS")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--stride", type=int, default=None, help="default: the window")
    p.add_argument(
        "--bos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prepend BOS to every evaluation window (default: where the tokenizer puts one "
        "first, e.g. Gemma)",
    )
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
    p.add_argument(
        "--teacher-topk",
        type=int,
        default=64,
        help="KD reads the teacher's K most likely tokens and the rest's mass, computed once "
        "and stored (default 64); 0: the live teacher's full distribution",
    )
    p.add_argument(
        "--save-every",
        type=int,
        default=None,
        help="checkpoint every N steps (default: --eval-every)",
    )
    p.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute activations: less memory"
    )


def _out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="blocks, units and parameter counts of a model")
    p.add_argument("model", help="packaged name (smollm2-135m) or local model directory")
    p.add_argument("--encoder", action="store_true", help="an encoder (e.g. minilm-l6)")
    p.set_defaults(func=commands.cmd_inspect)


def add_score(sub) -> None:
    p = sub.add_parser("score", help="score units on calibration text -> scores.json")
    p.add_argument("model")
    _config_args(p)
    _calib_args(p)
    p.add_argument("--out", default="scores.json")
    p.add_argument("--encoder", action="store_true", help="an encoder (e.g. minilm-l6)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=commands.cmd_score)


def add_plan(sub) -> None:
    p = sub.add_parser("plan", help="plan removals from scores.json under a budget")
    p.add_argument("scores")
    _config_args(p)
    p.add_argument("--out", default=None, help="write plan.json here")
    p.set_defaults(func=commands.cmd_plan)


def add_apply(sub) -> None:
    p = sub.add_parser("apply", help="apply plan.json to a model and save it")
    p.add_argument("model"), p.add_argument("plan")
    _out_args(p)
    _calib_args(p)
    _repair_arg(p, "auto (default): the plan's own, as prune would have repaired it")
    p.add_argument("--encoder", action="store_true", help="an encoder (e.g. minilm-l6)")
    p.set_defaults(func=commands.cmd_apply)


def add_prune(sub) -> None:
    p = sub.add_parser("prune", help="score, plan, apply, save and report in one go")
    p.add_argument("model")
    _config_args(p)
    _calib_args(p)
    _eval_args(p)
    _out_args(p)
    p.add_argument("--encoder", action="store_true", help="an encoder (e.g. minilm-l6): width")
    p.add_argument("--steps", type=int, default=1, help="k rounds of prune → recover → re-score")
    p.add_argument("--recover", default=None, help="lora or full: recover after every round")
    p.add_argument("--quantize", default=None, help="quantize last: dynamic_int8")
    p.add_argument("--recipe", default=None, help="recipe.json (prune/steps/recover/quantize)")
    p.add_argument(
        "--export",
        default=None,
        help="also export into OUT/FORMAT: hf, hf-hetero, gguf or gguf:TYPE (e.g. gguf:q4_k_m)",
    )
    p.add_argument(
        "--streaming",
        action="store_true",
        help="one block in memory at a time (read from the shards, written on disk): blocks, "
        "sublayers, heads, neurons; one-shot; --perplexity streamed too",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --streaming: continue the scores of a killed run with the same --out from "
        "its last finished block (local depth metrics, heads / neurons)",
    )
    _runtime_arg(p)
    _train_args(p)
    p.set_defaults(func=commands.cmd_prune)


def _runtime_arg(p) -> None:
    p.add_argument(
        "--runtime",
        default="torch",
        help="where the joint search (--units auto) times its options and candidates: torch "
        "(default: PyTorch on the model's device) or llamacpp[:TYPE] (GGUF exports timed in "
        "llama.cpp, TYPE default f16; needs make llama)",
    )


def add_frontier(sub) -> None:
    p = sub.add_parser(
        "frontier", help="joint plans (every unit kind, one option per block) for several budgets"
    )
    p.add_argument("model")
    p.add_argument(
        "--budgets",
        required=True,
        help="points of the frontier, comma-separated; '+' joins budgets of one point: "
        "latency=0.1,latency=0.2 or latency=0.3+kv=0.5 (keys latency, prefill, kv, "
        "params[:non_embedding])",
    )
    p.add_argument("--budget-mode", default="at_least", help="at_least, at_most or nearest")
    p.add_argument("--k", type=int, default=3, help="best solutions assembled and measured")
    p.add_argument("--table", default=None, help="an options.json of an earlier run to reuse")
    p.add_argument("--protect-first", type=int, default=1, help="first blocks that only keep")
    p.add_argument("--protect-last", type=int, default=1, help="last blocks that only keep")
    p.add_argument("--out", required=True, help="folder: options.json, plans/, frontier.json")
    p.add_argument("--overwrite", action="store_true")
    _runtime_arg(p)
    _calib_args(p)
    p.set_defaults(func=commands.cmd_frontier)


def add_recover(sub) -> None:
    p = sub.add_parser("recover", help="fine-tune a pruned run (LoRA / full / distillation)")
    p.add_argument("run", help="a directory written by prune/apply")
    p.add_argument("--method", default="lora", help="lora or full")
    p.add_argument("--teacher", default=None, help="dense model for --loss kd (default: source)")
    p.add_argument("--calib", default="wiki", help="training text: packaged name or a file")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed or interrupted run from its last checkpoint (OUT.checkpoints)",
    )
    p.add_argument(
        "--teacher-targets",
        default=None,
        help="the stored top-k teacher targets (default OUT.checkpoints/teacher-topK.safetensors"
        "): reused when computed for the same tokenizer, text and K",
    )
    p.add_argument(
        "--stream-teacher",
        action="store_true",
        help="compute the teacher's targets one block in memory at a time (a teacher too big "
        "to load beside the student)",
    )
    _train_args(p)
    _eval_args(p)
    _out_args(p)
    p.set_defaults(func=commands.cmd_recover)


def add_quantize(sub) -> None:
    p = sub.add_parser(
        "quantize", help="quantize a pruned run: int8, 4-bit AWQ / GPTQ (llm-compressor), GGUF"
    )
    p.add_argument("run", help="a directory written by prune/apply/recover")
    p.add_argument(
        "--method",
        default="dynamic_int8",
        metavar="METHOD",
        help=f"{', '.join(INT8_METHODS)} (PyTorch int8); {', '.join(INT4_METHODS)} (4-bit, "
        "llm-compressor); gguf-TYPE, a GGUF file through llama.cpp's quantizer, TYPE one of "
        f"{', '.join(GGUF_TYPES)} (+imatrix: with llama.cpp's importance matrix of --calib, "
        "--n-samples windows (default 64) of --seq-len tokens) (default %(default)s)",
    )
    p.add_argument("--skip", nargs="*", default=[], help="module path suffixes kept float")
    p.add_argument("--group-size", type=int, default=128, help="gptq/awq input-width group")
    _calib_args(p)
    p.add_argument(
        "--quantize-mlp-out",
        action="store_true",
        help="int8 the MLP output projections too (kept fp32 by default: activation outliers)",
    )
    p.add_argument("--out", default=None, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _eval_args(p)
    p.set_defaults(func=commands.cmd_quantize)


def add_export(sub) -> None:
    p = sub.add_parser("export", help="a pruned run for llama.cpp (GGUF) or Hugging Face")
    p.add_argument("run", help="a directory written by prune/apply/recover")
    p.add_argument(
        "--format",
        required=True,
        help="hf (plain checkpoint: uniform results), hf-hetero (trust_remote_code: any plan), "
        "gguf (llama.cpp)",
    )
    p.add_argument(
        "--quant",
        default=None,
        help="gguf: f32 (default), f16, q8_0, q4_k_m, … (q4_k_m+imatrix: with llama.cpp's "
        "importance matrix of 64 × 256 calibration tokens of wiki)",
    )
    p.add_argument(
        "--no-verify", dest="verify", action="store_false", help="skip the runtime check"
    )
    _out_args(p)
    p.set_defaults(func=commands.cmd_export)


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="methods × budgets trade-off curves (resumable)")
    p.add_argument("model")
    p.add_argument("--methods", default="random,bi,gromov,iterative,sublayer")
    p.add_argument("--budgets", default="0.1,0.2,0.3,0.4", help="fractions of params")
    p.add_argument("--count", default="all", help="budgets of all or non_embedding params")
    p.add_argument("--protect-first", type=int, default=1)
    p.add_argument("--protect-last", type=int, default=1)
    p.add_argument("--out", required=True, help="sweep directory (resumed if it exists)")
    p.add_argument("--overwrite", action="store_true", help="restart a sweep with new settings")
    _calib_args(p)
    _eval_args(p)
    p.set_defaults(func=commands.cmd_sweep)


def add_explain(sub) -> None:
    p = sub.add_parser("explain", help="leave-one-out perplexity per unit; pair dependency")
    p.add_argument("model")
    p.add_argument("--units", default="attention,mlp", help="unit kinds to remove one by one")
    p.add_argument("--pairs", default="", help="e.g. mlp:21+mlp:22,attention:3+attention:4")
    _eval_args(p)
    _out_args(p)
    p.set_defaults(func=commands.cmd_explain)


def add_report(sub) -> None:
    p = sub.add_parser("report", help="self-contained report.html of a prune output")
    p.add_argument("run", help="a directory written by depthcut prune")
    p.add_argument("--sweep", default=None, help="a sweep directory whose curves to include")
    p.add_argument("--generate", action="store_true", help="greedy samples before/after")
    p.add_argument("--base", default=None, help="source model for the 'before' samples")
    p.set_defaults(func=commands.cmd_report)


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="prune outputs side by side: method, removed, quality")
    p.add_argument("runs", nargs="+", help="directories written by depthcut prune")
    p.set_defaults(func=commands.cmd_compare)


def add_eval_and_bench(sub) -> None:
    for verb, func, text in (
        ("eval", commands.cmd_eval, "perplexity / latency"),
        ("bench", commands.cmd_bench, "latency, interleaved with --base"),
    ):
        p = sub.add_parser(verb, help=text + " (before/after table with --base)")
        p.add_argument("model")
        p.add_argument("--base", default=None, help="the unpruned model, for a before/after table")
        p.add_argument("--json", default=None, help="also write the results here")
        _eval_args(p)
        p.set_defaults(func=func)


VERBS = (
    add_inspect,
    add_score,
    add_plan,
    add_apply,
    add_prune,
    add_frontier,
    add_recover,
    add_quantize,
    add_export,
    add_sweep,
    add_explain,
    add_report,
    add_compare,
    add_eval_and_bench,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthcut", description=commands.__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    for add in VERBS:
        add(sub)
    _common_args(sub.choices)
    return parser


NO_MODEL_VERBS = ("plan",)


def _common_args(verbs: dict[str, argparse.ArgumentParser]) -> None:
    """``--verbose`` on every verb; ``--tokenizer``, ``--device`` and ``--dtype`` on every
    verb that loads a model."""
    for verb, p in verbs.items():
        p.add_argument("--verbose", action="store_true", help="show library logs and warnings")
        if verb not in NO_MODEL_VERBS:
            _device_args(p)
            p.add_argument(
                "--tokenizer",
                default=None,
                help="tokenizer directory or packaged name, for a model directory without one",
            )


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:N or auto (a GPU when there is one)"
    )
    p.add_argument(
        "--dtype",
        default="auto",
        help="float32, bfloat16, float16 or auto (checkpoint dtype on a GPU, float32 on the CPU)",
    )
    p.add_argument(
        "--max-memory",
        default=None,
        help="e.g. 0=20GiB,1=20GiB,cpu=60GiB: spread the model over devices (accelerate); "
        "prune streams a model that does not fit",
    )
