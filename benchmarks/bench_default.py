"""The default command, with default flags, on the packaged real models: wall time, peak RSS
as a multiple of the float32 checkpoint, and held-out perplexity before / after.

    python benchmarks/bench_default.py                                  # the three models
    python benchmarks/bench_default.py --models qwen2.5-coder-1.5b

Each run is ``depthcut prune MODEL --budget params=0.25:non_embedding --perplexity --out DIR``
in a fresh subprocess (its peak RSS from ``getrusage(RUSAGE_CHILDREN)``: imports, model,
statistics, activations and the save's verification all count). The rows go to
``benchmarks/results/default.json`` with the command, commit, date and hardware.

``--decode`` also times the saved pruned model against the dense one, batch-1 cached decode
interleaved in this process (``search.joint.decode_ratio``, the comparison the joint search's
check makes), so the default's decode-time saving compares with the joint plans'.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # results_file, also when imported
import results_file  # noqa: E402

RESULTS = results_file.RESULTS / "default.json"
MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-1.5b")
BUDGET = "params=0.25:non_embedding"


def run_default(model: str, out: Path) -> dict:
    """One default prune of ``model`` into ``out``: seconds, peak RSS and what it logged."""
    cmd = ["depthcut", "prune", model, "--budget", BUDGET, "--perplexity", "--out", str(out)]
    code = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    code += "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    exe = [sys.executable, "-m", "depthcut.cli", *cmd[1:]]
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    log = out.parent / "stderr.log"  # progress bars land here while it runs (tail -f)
    print(f"{model}: log in {log}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with log.open("w") as err:
        done = subprocess.run(
            [sys.executable, "-c", code, *exe],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    seconds = time.perf_counter() - start
    stderr = log.read_text()
    if done.returncode != 0:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"command": _shown(cmd, out), "failed": tail, "seconds": seconds}
    rss = int(done.stdout.strip().splitlines()[-1]) * 1024
    return {"command": _shown(cmd, out), "seconds": seconds, "peak_rss": rss, "log": stderr}


def _shown(cmd: list[str], out: Path) -> str:
    return " ".join(cmd).replace(str(out), "OUT")


def describe_run(model: str, out: Path, measured: dict) -> dict:
    """The row of one finished run, read back from what it wrote."""
    from depthcut.models import resolve

    ckpt = sum(f.stat().st_size for f in resolve(model).glob("*.safetensors"))
    report = json.loads((out / "report.json").read_text())
    plan = report["plan"]
    sized = re.search(r"calibration (\d+) × (\d+) tokens", measured.pop("log"))
    repair = plan.get("run", {}).get("repair", {})
    return {
        "model": model,
        **measured,
        "checkpoint_bytes": ckpt,
        "rss_over_checkpoint": measured["peak_rss"] / ckpt,
        "calibration_windows": int(sized.group(1)) if sized else 16,
        "removed_non_embedding": plan["removed_params"] / plan["model"]["params_non_embedding"],
        "ppl_before": report["before"]["perplexity"]["perplexity"],
        "ppl_after": report["after"]["perplexity"]["perplexity"],
        "repair_ridge": repair.get("width", {}).get("ridge"),
        "repair_seconds": repair.get("seconds"),
    }


def decode_saving(model: str, out: Path) -> dict:
    """{"decode_saved": 1 − pruned ÷ dense decode seconds per token, "other_cpu"}: the saved
    run against the dense model, interleaved, two threads."""
    import torch

    from depthcut.io import load
    from depthcut.models import load_model
    from depthcut.search.joint import decode_ratio

    torch.set_num_threads(2)
    dense, _ = load_model(model)
    pruned, _ = load(out, with_tokenizer=False)
    ratio, other = decode_ratio(dense.eval(), pruned.eval())
    return {"decode_saved": 1.0 - ratio, "decode_other_cpu": other}


def _earlier_rows() -> list[dict]:
    """The rows already in the results file, each stamped with the commit and date it ran at
    (rows written before rows carried their own take the file's)."""
    if not RESULTS.exists():
        return []
    old = json.loads(RESULTS.read_text())
    return [{"commit": old["commit"], "date": old["date"]} | r for r in old["rows"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--decode", action="store_true", help="time the pruned model's decode too")
    args = ap.parse_args()
    rows = []
    for model in args.models.split(","):
        folder = Path(tempfile.mkdtemp(dir=os.environ.get("BENCH_TMP")))
        measured = run_default(model, folder / "run")
        row = measured if "failed" in measured else describe_run(model, folder / "run", measured)
        if args.decode and "failed" not in row:
            row |= decode_saving(model, folder / "run")
        rows.append(
            row | {"model": model, "commit": results_file.commit(), "date": results_file.today()}
        )
        shutil.rmtree(folder, ignore_errors=True)
        print(json.dumps(rows[-1]), flush=True)
    kept = [r for r in _earlier_rows() if r["model"] not in {r["model"] for r in rows}]
    results_file.write(
        "default",
        {"rows": kept + rows},
        "python benchmarks/bench_default.py --models " + args.models + " --decode" * args.decode,
    )


if __name__ == "__main__":
    main()
