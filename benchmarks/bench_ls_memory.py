"""Peak memory of the default method's statistics at the real 1.5B model's widths: ls neuron
scores + the ls refit on a random Qwen2 model with Qwen2.5-1.5B's block (hidden 1536, MLP
8960, 12 / 2 heads) but ``--blocks`` blocks and a small vocabulary, on the calibration size the
default picks for it (68 × 256 tokens). Each run is a fresh subprocess; the figure is its peak
RSS less the RSS right after the model was built (imports, weights and calibration excluded),
i.e. what scoring and repair add on top of the model.

    python benchmarks/bench_ls_memory.py                       # this checkout
    python benchmarks/bench_ls_memory.py --compare OTHER/src   # + another checkout's src/
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # results_file
import results_file  # noqa: E402

RUN = """
import json, resource, sys, time
import torch
torch.set_num_threads(2)
from transformers import Qwen2Config, Qwen2ForCausalLM
import depthcut as dc
from depthcut.data import CalibData

torch.manual_seed(0)
cfg = Qwen2Config(hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
                  num_key_value_heads=2, num_hidden_layers=int(sys.argv[1]), vocab_size=1024,
                  tie_word_embeddings=False)
model = Qwen2ForCausalLM(cfg).eval()
ids = torch.randint(0, 1024, (68, 256), generator=torch.Generator().manual_seed(1))
calib = CalibData(ids, torch.ones_like(ids), 4)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prune = dc.PruneConfig(units=("neuron",), neurons=0.25, width_importance="ls", repair="ls",
                       protect_first=0, protect_last=0)
start = time.perf_counter()
scores = dc.score(model, prune, calib, progress=False)
scored = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
plan = dc.plan(scores, prune, model)
dc.repair(model, plan, calib, "ls", progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"model_mb": sum(p.numel() for p in model.parameters()) * 4 / 2**20,
                  "score_extra_mb": (scored - base) / 1024, "repair_extra_mb": (peak - base) / 1024,
                  "seconds": time.perf_counter() - start}))
"""


def measure(src: Path, blocks: int) -> dict:
    env = os.environ | {"PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(blocks)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        return {"failed": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--compare", type=Path, help="another checkout's src/ to measure beside")
    args = ap.parse_args()
    rows = [{"code": "this checkout", **measure(ROOT / "src", args.blocks)}]
    if args.compare:
        rows.append({"code": _commit_of(args.compare), **measure(args.compare, args.blocks)})
    for row in rows:
        print(json.dumps(row), flush=True)
    results_file.write("ls_memory", {"blocks": args.blocks, "rows": rows})


def _commit_of(src: Path) -> str:
    """``commit X`` of the checkout holding ``src`` (its path when it is not a git checkout)."""
    found = results_file.commit(src)
    return f"commit {found}" if found else str(src)


if __name__ == "__main__":
    main()
