"""Peak resident memory of `depthcut prune` as a multiple of the checkpoint's bytes, in-memory
and `--streaming`, each run in a fresh subprocess (its peak RSS comes from
``getrusage(RUSAGE_CHILDREN)``: imports, model, activations and save verification all count).

    python benchmarks/bench_memory.py                 # packaged SmolLM2-135M
    python benchmarks/bench_memory.py --llama-1b      # + a 1.1B Llama-shaped random checkpoint
    python benchmarks/bench_memory.py --llama-7b      # + a 6.9B Llama-2-shaped one, bfloat16
    python benchmarks/bench_memory.py --compare SRC   # + another checkout's src/ beside

The 1.1B checkpoint (22 blocks, hidden 2048, MLP 5632, 32 heads / 4 KV heads, float32) and the
6.9B one (Llama-2-7B's 32 blocks, hidden 4096, MLP 11008, 32 heads; bfloat16, 13.7 GB) use
SmolLM2's 49,152-token vocabulary so its tokenizer fits; each is written block by block, never
whole. The 6.9B model is only streamed (its in-memory run would not be a fair row on a 24 GB
machine), on fewer calibration tokens: bfloat16 matrix products are slow on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def checkpoint_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


SHAPES = {
    "llama-1.1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
    ),
    "llama-6.9b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
}


def write_llama(folder: Path, tokenizer_dir: Path, shape: str, dtype: str = "float32") -> Path:
    """A random Llama-shaped checkpoint, one safetensors shard per block."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    if (folder / "model.safetensors.index.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**SHAPES[shape], vocab_size=49152, tie_word_embeddings=False, dtype=dtype)
    cast = getattr(torch, dtype)
    with torch.device("meta"):
        shapes = {
            n: p.shape for n, p in AutoModelForCausalLM.from_config(config).state_dict().items()
        }
    groups: dict[str, list[str]] = {}
    for name in shapes:
        parts = name.split(".")
        key = f"block{int(parts[2]):02d}" if parts[1] == "layers" else "rest"
        groups.setdefault(key, []).append(name)
    gen, weight_map = torch.Generator().manual_seed(0), {}
    for key, names in sorted(groups.items()):
        file = f"model-{key}.safetensors"
        tensors = {
            n: (
                torch.randn(shapes[n], generator=gen) * 0.02
                if len(shapes[n]) > 1
                else torch.ones(shapes[n])
            ).to(cast)
            for n in names
        }
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(names, file)
    index = {"metadata": {"total_size": checkpoint_bytes(folder)}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    config.save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / f, folder / f)
    return folder


def peak_rss(src: Path, model: str, extra: list[str], tokens=(8, 128)) -> tuple[int, float]:
    """(peak RSS in bytes, seconds) of one prune run with ``src`` first on the import path."""
    out = Path(tempfile.mkdtemp(dir=os.environ.get("BENCH_TMP"))) / "run"
    cmd = [
        sys.executable,
        "-m",
        "depthcut.cli",
        "prune",
        model,
        "--units",
        "block",
        "--budget",
        "params=0.25",
        "--n-samples",
        str(tokens[0]),
        "--seq-len",
        str(tokens[1]),
        "--out",
        str(out),
        *extra,
    ]
    env = os.environ | {"PYTHONPATH": str(src), "OMP_NUM_THREADS": "2"}
    code = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    code += "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *cmd], env=env, capture_output=True, text=True, check=True
    )
    shutil.rmtree(out.parent, ignore_errors=True)
    return int(done.stdout.strip().splitlines()[-1]) * 1024, time.perf_counter() - start


def main() -> None:
    from depthcut.models import resolve

    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-1b", action="store_true")
    ap.add_argument("--llama-7b", action="store_true")
    ap.add_argument("--only-7b", action="store_true", help="just the 6.9B streaming rows")
    ap.add_argument("--compare", type=Path, help="another checkout's src/ to measure beside")
    args = ap.parse_args()
    smol = resolve("smollm2-135m")
    models = {"smollm2-135m": smol}
    cache = Path(os.environ.get("DEPTHCUT_CACHE", Path.home() / ".cache/depthcut")) / "bench"
    if args.llama_1b:
        models["llama-1.1b (random)"] = write_llama(cache / "llama-1.1b", smol, "llama-1.1b")
    big = None
    if args.llama_7b or args.only_7b:
        big = write_llama(cache / "llama-6.9b-bf16", smol, "llama-6.9b", "bfloat16")
    if args.only_7b:
        models = {}
    rows = [
        ("in-memory", ROOT / "src", []),
        ("in-memory --perplexity", ROOT / "src", ["--perplexity", "--max-windows", "4"]),
        ("--streaming", ROOT / "src", ["--streaming"]),
        (
            "--streaming --perplexity",
            ROOT / "src",
            ["--streaming", "--perplexity", "--max-windows", "4"],
        ),
        ("--streaming neurons", ROOT / "src", ["--streaming", *NEURONS]),
    ]
    if args.compare:
        rows.append(("compare --perplexity", args.compare, ["--perplexity", "--max-windows", "4"]))
    print(f"{'model':<22} {'GB':>6}  {'run':<24} {'peak RSS GB':>11} {'÷ ckpt':>7} {'s':>6}")
    for name, folder in models.items():
        size = checkpoint_bytes(folder)
        for label, src, extra in rows:
            rss, secs = peak_rss(src, str(folder), extra)
            print(
                f"{name:<22} {size / 1e9:>6.2f}  {label:<24} {rss / 1e9:>11.2f} "
                f"{rss / size:>6.2f}× {secs:>6.1f}",
                flush=True,
            )
    if big is not None:
        _big_rows(big)


NEURONS = ["--units", "neuron", "--width-importance", "activation_frequency"]


def _big_rows(folder: Path) -> None:
    """The 6.9B bfloat16 checkpoint, streamed in bfloat16: blocks, then neurons (activation
    frequency; every block sliced on disk), on 4 × 64 calibration tokens."""
    size = checkpoint_bytes(folder)
    bf16 = ["--streaming", "--dtype", "bfloat16"]
    runs = [("--streaming bf16 blocks", bf16), ("--streaming bf16 neurons", [*bf16, *NEURONS])]
    for label, extra in runs:
        rss, secs = peak_rss(ROOT / "src", str(folder), extra, tokens=(4, 64))
        print(
            f"{'llama-6.9b (random)':<22} {size / 1e9:>6.2f}  {label:<24} {rss / 1e9:>11.2f} "
            f"{rss / size:>6.2f}× {secs:>6.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
