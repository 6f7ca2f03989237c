"""Peak resident memory of `depthcut prune … --perplexity` as a multiple of the checkpoint's
bytes, for the code in this tree and (optionally) another checkout, run one after the other.

    python benchmarks/bench_memory.py [--model smollm2-135m] [--compare OTHER_SRC_DIR]

Each run is a fresh subprocess (``resource.getrusage(RUSAGE_CHILDREN)`` after it ends gives its
peak RSS), so imports, the model, activations and the save-verify reload all count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkpoint_bytes(model: str) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from depthcut.models import resolve

    return sum(f.stat().st_size for f in resolve(model).glob("*.safetensors"))


def peak_rss(src: Path, model: str, extra: list[str]) -> int:
    """Peak RSS in bytes of one prune run with ``src`` first on the import path."""
    out = Path(tempfile.mkdtemp()) / "run"
    cmd = [sys.executable, "-m", "depthcut.cli", "prune", model, "--units", "block"]
    cmd += ["--budget", "params=0.25", "--perplexity", "--out", str(out), *extra]
    env = os.environ | {"PYTHONPATH": str(src), "OMP_NUM_THREADS": "2"}
    code = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    code += "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    done = subprocess.run(
        [sys.executable, "-c", code, *cmd], env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip().splitlines()[-1]) * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--compare", type=Path, help="another checkout's src/ to measure beside")
    args = ap.parse_args()
    size = checkpoint_bytes(args.model)
    runs = {"this tree": ROOT / "src"} | ({"compare": args.compare} if args.compare else {})
    print(f"{args.model}: checkpoint {size / 1e9:.2f} GB (float32)")
    print(f"{'code':<12} {'peak RSS GB':>12} {'÷ checkpoint':>13}")
    for name, src in runs.items():
        rss = peak_rss(src, args.model, [])
        print(f"{name:<12} {rss / 1e9:>12.2f} {rss / size:>12.2f}×")


if __name__ == "__main__":
    main()
