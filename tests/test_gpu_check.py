"""benchmarks/gpu_check.sh runs (its CPU float32 fallback here) and prints one row per run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from tiny import save_tiny, words

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_fallback(tmp_path):
    save_tiny(tmp_path / "m")
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(words(300, seed=s) for s in range(12)))
    env = os.environ | {
        "PY": sys.executable,
        "MODEL": str(tmp_path / "m"),
        "WINDOWS": "2",
        "EXTRA": f"--eval-text {text} --window 32",
        "PRUNE_EXTRA": f"--calib {text} --n-samples 4 --seq-len 32",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_check.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr + done.stdout
    rows = [line for line in done.stdout.splitlines() if re.match(r"(cpu|cuda)-", line)]
    assert len(rows) == (2 if torch.cuda.is_available() else 1)
    numbers = re.findall(r"ppl\s+([\d.]+) ->\s+([\d.]+) \(reloaded\s+([\d.]+)\)", rows[-1])
    ((dense, pruned, reloaded),) = numbers
    assert float(pruned) == float(reloaded)  # the saved run reloads to the same perplexity
    assert float(dense) != float(pruned)
