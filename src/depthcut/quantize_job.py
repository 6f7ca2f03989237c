"""``depthcut quantize RUN_DIR``: quantize a pruned (and recovered) run, measure it against
the float run, and save it (int8) or prepare the 4-bit GPU step (AWQ/GPTQ)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from depthcut.errors import DepthcutError


def quantize_dir(args, settings) -> Path | None:
    from depthcut.int4 import INT4_METHODS

    if args.method in INT4_METHODS:
        return _int4_dir(args)
    return _int8_dir(args, settings)


def _int8_dir(args, settings) -> Path | None:
    from depthcut.eval.run import evaluate_models
    from depthcut.io import prepare_output, read_meta, save
    from depthcut.models import load_model
    from depthcut.planning.plan import Plan
    from depthcut.quantize import SAVED_METHODS, QuantizeConfig, quantize, size_mb

    cfg = QuantizeConfig(args.method, tuple(args.skip), keep_mlp_out=not args.quantize_mlp_out)
    if args.out and cfg.method not in SAVED_METHODS:
        raise DepthcutError(
            f"{cfg.method} is for measurement only (slower than dynamic_int8 on CPU here); "
            "drop --out, or use --method dynamic_int8"
        )
    if args.out:
        prepare_output(args.out, args.overwrite)
    meta = read_meta(args.run)
    model, tok = load_model(args.run, tokenizer=args.tokenizer)
    qmodel = quantize(model, cfg)
    results = evaluate_models({"float": model, "quantized": qmodel}, tok, settings)
    for name, m in (("float", model), ("quantized", qmodel)):
        results[name]["size_mb"] = size_mb(m)
    print(_table(results))
    if not args.out:
        return None
    plans = [Plan.from_dict(p) for p in meta["plans"]]
    info = {k: meta[k] for k in ("source", "recovery") if k in meta}
    info["quantization"] = cfg.to_dict()

    def extra(tmp: Path) -> None:
        (tmp / "quantize.json").write_text(json.dumps(results, indent=2) + "\n")

    return save(qmodel, plans, args.out, tok, args.overwrite, extra=extra, meta=info)


def _table(results: dict) -> str:
    f, q = results["float"], results["quantized"]
    rows = [("size (MB)", f"{f['size_mb']:.1f}", f"{q['size_mb']:.1f}")]
    if "perplexity" in f:
        rows.append(
            (
                "perplexity",
                f"{f['perplexity']['perplexity']:.3f}",
                f"{q['perplexity']['perplexity']:.3f}",
            )
        )
    if "latency" in f:
        for batch, tps in f["latency"]["decode_tps"].items():
            rows.append(
                (
                    f"decode batch {batch} (tok/s)",
                    f"{tps:.1f}",
                    f"{q['latency']['decode_tps'][batch]:.1f}",
                )
            )
    lines = ["| metric | float | quantized |", "|---|---:|---:|"]
    return "\n".join(lines + [f"| {m} | {a} | {b} |" for m, a, b in rows])


def _int4_dir(args) -> Path:
    from depthcut.int4 import GPU_STEPS, check_alignment, recipe_yaml
    from depthcut.io import atomic_dir, prepare_output
    from depthcut.models import load_model

    if not args.out:
        raise DepthcutError(f"--method {args.method} writes a GPU recipe: give --out")
    out = prepare_output(args.out, args.overwrite)
    model, _ = load_model(args.run, need_tokenizer=False)
    check_alignment(model, args.group_size)
    recipe = recipe_yaml(args.method, args.group_size, tuple(args.skip) or ("lm_head",))

    def write(tmp: Path) -> None:
        (tmp / "int4_recipe.yaml").write_text(recipe)
        text = GPU_STEPS.format(
            method=args.method, group_size=args.group_size, model_dir=Path(args.run).resolve()
        )
        (tmp / "INT4.md").write_text(text)

    atomic_dir(out, write, args.overwrite)
    print(f"depthcut: widths fit group size {args.group_size}; recipe -> {out}", file=sys.stderr)
    return out
