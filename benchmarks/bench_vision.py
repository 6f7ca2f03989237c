"""Algorithm 9 (fine-grained depth pruning of CNNs) on real images: Fashion-MNIST.

    python benchmarks/bench_vision.py            # ≈8 min on 2 cores (+2 min training, once)
    python benchmarks/bench_vision.py --table    # the README table from the results file

The YOLO-style ``FashionNet`` trained once on the 60,000 training images (cached), then pruned
to 25% and 50% of its parameters by Algorithm 9 (Taylor importance recomputed after every
removal) and by the same Taylor importance ranked once on the dense network, on 2,000
training images. Each pruned model is recovered by one epoch over the training set (AdamW,
one-cycle 1e-3); the dense model trained for the same extra epoch is the control. Top-1 on all
10,000 test images; forward latency at batch 256 and batch 1, dense and pruned interleaved,
medians of 9 samples of ≈0.2 s with their spread. Results: ``benchmarks/results/vision.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # results_file, also when imported
import depthcut as dc  # noqa: E402
import results_file  # noqa: E402
from depthcut.timing import interleaved, reliability, spread  # noqa: E402
from depthcut.vision import Recipe, fashion_mnist, fit, top1, trained_cnn  # noqa: E402

RECOVERY = Recipe(epochs=1, lr=1e-3, seed=1)
TARGETS = (0.25, 0.5)
CALIBRATION = 2000


def plans(model, images, labels) -> dict:
    """Name → (plan, seconds to plan) for every target and ranking."""
    batches = [(images[i : i + 250], labels[i : i + 250]) for i in range(0, CALIBRATION, 250)]
    out = {}
    for target in TARGETS:
        for name, rescore in (("Algorithm 9", True), ("Taylor once", False)):
            start = time.perf_counter()
            plan = dc.cnn_plan(
                model, images[:2], batches, F.cross_entropy, target, rescore, progress=False
            )
            out[f"{name}, {target:.0%}"] = (plan, time.perf_counter() - start)
    return out


CALLS = {256: 5, 1: 100}  # forward passes per timed sample: ≈0.2 s each, not a 2 ms blip


def latency(models: dict, images) -> dict:
    """Name → {ms_b256, ms_b1, spread, other_cpu} measured interleaved: medians of 9 samples,
    each the mean of ``CALLS`` forward passes."""
    calls = {}
    for name, model in models.items():
        for batch, n in CALLS.items():
            x = images[:batch]
            calls[(name, batch)] = lambda m=model, x=x, n=n: [m(x) for _ in range(n)]
    with torch.no_grad():
        seconds, other_cpu = interleaved(calls, repeats=9, warmup=2)
    out = {}
    for (name, batch), values in seconds.items():
        row = out.setdefault(name, {"other_cpu": other_cpu, "spread": {}})
        row[f"ms_b{batch}"] = 1000 * statistics.median(values) / CALLS[batch]
        row["spread"][f"b{batch}"] = spread(values)
    for row in out.values():
        row["unreliable"] = reliability(row["spread"], other_cpu)
    return out


def run() -> dict:
    torch.set_num_threads(2)
    model = trained_cnn()
    train_x, train_y = fashion_mnist("train")
    test_x, test_y = fashion_mnist("test")
    control = fit(copy.deepcopy(model), train_x, train_y, RECOVERY, desc="dense +1 epoch")
    rows = [
        {"name": "dense", "removed": 0.0, "top1": top1(model, test_x, test_y)},
        {"name": "dense + 1 epoch", "removed": 0.0, "top1": top1(control, test_x, test_y)},
    ]
    pruned = {}
    for name, (plan, seconds) in plans(model, train_x, train_y).items():
        small = dc.apply(model, plan)
        before = top1(small, test_x, test_y)
        pruned[name] = fit(small, train_x, train_y, RECOVERY, desc=name)
        rows.append(
            {
                "name": name,
                "removed": plan.fraction(),
                "units": [a.path for a in plan.actions],
                "plan_seconds": seconds,
                "top1_pruned": before,
                "top1": top1(pruned[name], test_x, test_y),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    timed = latency({"dense": model, **pruned}, test_x)
    for row in rows:
        key = "dense" if row["name"].startswith("dense") else row["name"]
        row["latency"] = timed[key]
        row["speedup_b256"] = timed["dense"]["ms_b256"] / timed[key]["ms_b256"]
        row["speedup_b1"] = timed["dense"]["ms_b1"] / timed[key]["ms_b1"]
    return {"params": sum(p.numel() for p in model.parameters()), "recovery": vars(RECOVERY)} | {
        "rows": rows
    }


def table(results: dict) -> str:
    """The README's table: top-1 before / after recovery and the measured speed-ups."""
    lines = [
        f"`{results['command']}` — {results['date']}, {results['hardware']['cores']} cores "
        f"({results['hardware']['cpu']}), commit {results['commit']}",
        "",
        "| model | params removed | top-1 pruned | top-1 after 1 epoch | speed-up b256 | b1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        pruned = f"{row['top1_pruned']:.2%}" if "top1_pruned" in row else ""
        warn = " ⚠" if row["latency"]["unreliable"] else ""
        lines.append(
            f"| {row['name']} | {row['removed']:.1%} | {pruned} | {row['top1']:.2%} | "
            f"{row['speedup_b256']:.2f}×{warn} | {row['speedup_b1']:.2f}×{warn} |"
        )
    lines.append("\n⚠: the timing flagged itself (spread over 10% between repeats, or a busy CPU)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", action="store_true", help="print the table of the results file")
    args = ap.parse_args()
    path = results_file.RESULTS / "vision.json"
    if not args.table:
        path = results_file.write("vision", run())
    print(table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
