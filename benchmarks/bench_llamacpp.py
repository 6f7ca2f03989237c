"""Speed where it is deployed: dense vs pruned SmolLM2-135M in llama.cpp (the ``llama_cpp``
binding), f16 and Q4_K_M, at 25% of non-embedding parameters removed by blocks (BI), by
sublayers (attention/MLP, BI) and by fine units (interleave, BI).

Every GGUF is written by ``depthcut``'s export (llama.cpp's converter; the heterogeneous
results through the ``deci`` arrays) and measured in one subprocess, interleaved, with the same
thread count: prefill tokens/s (512 tokens) and decode tokens/s (64 tokens, KV cache), medians
of 3 rounds; held-out perplexity on 4×512-token wiki windows computed from llama.cpp's own
logits, next to PyTorch's on the same windows. The ideal speedup is the ratio of weight bytes
read per token (blocks + LM head; the embedding lookup reads one row) dense ÷ pruned, from
the exported tensors.

    python benchmarks/bench_llamacpp.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import depthcut as dc
from depthcut.data import evaluation_tokens
from depthcut.formats.gguf_file import gguf_layout, write_gguf

THREADS, ROUNDS, PREFILL, DECODE, WINDOW, WINDOWS = 2, 3, 512, 64, 512, 4
PLANS = {
    "blocks": dict(units=("block",)),
    "sublayers": dict(units=("attention", "mlp")),
    "fine": dict(units=("fine",)),
}

MEASURE = r"""
import json, statistics, sys, time, numpy as np, llama_cpp
spec = json.load(open(sys.argv[1]))
def load(path):
    return llama_cpp.Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=spec["threads"],
                           logits_all=True, verbose=False)
models = {name: load(path) for name, path in spec["files"].items()}
prompt = spec["windows"][0][: spec["prefill"]]
times = {name: {"prefill": [], "decode": []} for name in models}
for _ in range(spec["rounds"]):
    for name, llm in models.items():  # interleaved: every model once per round
        llm.reset()
        start = time.perf_counter(); llm.eval(prompt); mid = time.perf_counter()
        for _ in range(spec["decode"]):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        end = time.perf_counter()
        times[name]["prefill"].append(len(prompt) / (mid - start))
        times[name]["decode"].append(spec["decode"] / (end - mid))
out = {}
for name, llm in models.items():
    nll, count = 0.0, 0
    for window in spec["windows"]:
        llm.reset(); llm.eval(window)
        s = np.asarray(llm.scores[: len(window)], dtype=np.float64)
        top = s.max(axis=1, keepdims=True)
        logp = s - top - np.log(np.exp(s - top).sum(axis=1, keepdims=True))
        nll -= logp[np.arange(len(window) - 1), window[1:]].sum(); count += len(window) - 1
    out[name] = {k: statistics.median(v) for k, v in times[name].items()}
    out[name]["ppl"] = float(np.exp(nll / count))
json.dump(out, sys.stdout)
"""


def read_bytes(model) -> int:
    """Weights read per token: every exported block tensor and the LM head (f16 bytes)."""
    layout = gguf_layout(model)
    blocks = sum(v.numel() for k, v in layout.state.items() if ".layers." in k)
    return 2 * (blocks + model.lm_head.weight.numel())


@torch.no_grad()
def torch_perplexity(model, windows: list[list[int]]) -> float:
    """The same windows in PyTorch (float32): the reference llama.cpp's numbers must track."""
    nll, count = 0.0, 0
    for window in windows:
        ids = torch.tensor([window])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        nll -= logp.gather(-1, ids[0, 1:, None]).sum().item()
        count += len(window) - 1
    return float(torch.exp(torch.tensor(nll / count)))


def pruned_models(model, tok) -> dict:
    calib = dc.calibration(tok, "wiki", n_samples=8, seq_len=128)
    out = {"dense": model}
    for name, kw in PLANS.items():
        cfg = dc.PruneConfig(importance="bi", budget=dc.Budget(0.25, count="non_embedding"), **kw)
        plan = dc.plan(dc.score(model, cfg, calib, progress=False), cfg, model)
        out[name] = dc.apply(model, plan)
        print(
            f"{name}: {len(plan.actions)} units removed, "
            f"{plan.fraction('non_embedding'):.1%} of non-embedding params",
            file=sys.stderr,
        )
    return out


def main() -> None:
    torch.set_num_threads(THREADS)
    model, tok = dc.load_model("smollm2-135m")
    models = pruned_models(model, tok)
    ids = evaluation_tokens(tok, "wiki", max_tokens=WINDOW * WINDOWS)
    windows = [ids[i * WINDOW : (i + 1) * WINDOW] for i in range(WINDOWS)]
    with tempfile.TemporaryDirectory(prefix="bench-llamacpp-") as tmp:
        files, layouts = {}, {}
        for name, m in models.items():
            for quant in ("f16", "q4_k_m"):
                folder = Path(tmp) / f"{name}-{quant}"
                folder.mkdir()
                layouts[name] = write_gguf(m, tok, folder, quant)
                files[f"{name} {quant}"] = str(folder / f"model-{quant}.gguf")
        spec = {
            "files": files,
            "threads": THREADS,
            "rounds": ROUNDS,
            "prefill": PREFILL,
            "decode": DECODE,
            "windows": windows,
        }
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, str(spec_file)],
            capture_output=True,
            text=True,
            check=True,
        )
        res = json.loads(done.stdout)
    dense_bytes = read_bytes(model)
    reference = {name: torch_perplexity(m, windows) for name, m in models.items()}
    print(
        f"SmolLM2-135M in llama.cpp ({THREADS} threads, medians of {ROUNDS} interleaved "
        f"rounds; prefill {PREFILL} tokens, decode {DECODE}; perplexity on {WINDOWS}×{WINDOW} "
        "held-out wiki tokens from llama.cpp's logits)"
    )
    print(
        "| model | GGUF layout | type | ideal | prefill tok/s | × dense | decode tok/s "
        "| × dense | % of ideal (decode) | perplexity | PyTorch f32 perplexity |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in models.items():
        ideal = dense_bytes / read_bytes(m)
        extra = gguf_layout(m).added_identity_params
        if extra:
            print(
                f"({name}: fine-pruned linears that became identities are written as identity "
                f"matrices, {extra:,} parameters, counted in 'ideal')",
                file=sys.stderr,
            )
        for quant in ("f16", "q4_k_m"):
            r, d = res[f"{name} {quant}"], res[f"dense {quant}"]
            pre, dec = r["prefill"] / d["prefill"], r["decode"] / d["decode"]
            print(
                f"| {name} | {layouts[name].split(': ', 1)[1]} | {quant} | {ideal:.3f} "
                f"| {r['prefill']:.0f} | {pre:.3f} | {r['decode']:.1f} | {dec:.3f} "
                f"| {dec / ideal:.0%} | {r['ppl']:.2f} | {reference[name]:.2f} |"
            )


if __name__ == "__main__":
    main()
