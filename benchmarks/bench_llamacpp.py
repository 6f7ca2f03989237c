"""Speed where it is deployed: dense vs pruned SmolLM2-135M in llama.cpp (the ``llama_cpp``
binding), f16, Q4_K_M and Q4_K_M with llama.cpp's importance matrix of 64 × 256 calibration
tokens (``llama-imatrix`` on each pruned model's own f32 GGUF), at 25% of non-embedding
parameters removed by depthcut's default (neurons ranked by ls, with the ls refit), by blocks
(BI), by sublayers (attention/MLP, BI) and by fine units (interleave, BI), and the joint plan
(``units="auto"``) at 25% of the measured decode time; each pruned model's PyTorch decode
speed-up (batch 1, interleaved with dense) beside llama.cpp's.

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
from depthcut.formats.gguf_file import gguf_layout, gguf_name, write_gguf
from depthcut.search.joint import decode_ratio
from results_file import provenance, show

THREADS, ROUNDS, PREFILL, DECODE, WINDOW, WINDOWS = 2, 3, 512, 64, 512, 4
QUANTS = ("f16", "q4_k_m", "q4_k_m+imatrix")
PARAMS = dc.Budget(0.25, count="non_embedding")
PLANS = {  # name: PruneConfig keywords (the default: neurons ranked by ls, with the ls refit)
    "default": dict(),
    "joint, 25% of decode time": dict(units="auto", budget=dc.Budget(latency=0.25)),
    "blocks": dict(units=("block",), importance="bi", repair="none"),
    "sublayers": dict(units=("attention", "mlp"), importance="bi", repair="none"),
    "fine": dict(units=("fine",), importance="bi", repair="none"),
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
    t = times[name]
    out[name]["spread"] = {k: (max(v) - min(v)) / statistics.median(v) for k, v in t.items()}
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


def pruned_models(model, tok) -> tuple[dict, dict]:
    """The dense model and each plan's pruned one; the plans' unit counts and shares removed."""
    calib = dc.calibration(tok, "wiki", n_samples=16, seq_len=256)
    out, plans = {"dense": model}, {"dense": {"units": 0, "removed": 0.0, "torch_decode": 1.0}}
    for name, kw in PLANS.items():
        cfg = dc.PruneConfig(**({"budget": PARAMS} | kw))
        out[name], plan, _ = dc.prune(model, cfg, calib, progress=False)
        plans[name] = {"units": len(plan.actions), "removed": plan.fraction("non_embedding")}
        plans[name]["torch_decode"] = 1 / decode_ratio(model, out[name])[0]
    return out, plans


def measure() -> dict:
    """Every plan exported to each of QUANTS and measured in llama.cpp, interleaved."""
    torch.set_num_threads(THREADS)
    model, tok = dc.load_model("smollm2-135m")
    models, plans = pruned_models(model, tok)
    ids = evaluation_tokens(tok, "wiki", max_tokens=WINDOW * WINDOWS)
    windows = [ids[i * WINDOW : (i + 1) * WINDOW] for i in range(WINDOWS)]
    with tempfile.TemporaryDirectory(prefix="bench-llamacpp-") as tmp:
        files, layouts = {}, {}
        for name, m in models.items():
            for quant in QUANTS:
                folder = Path(tmp) / f"{name}-{gguf_name(quant)}"
                folder.mkdir()
                layouts[name] = write_gguf(m, tok, folder, quant)
                files[f"{name} {quant}"] = str(folder / gguf_name(quant))
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
    rows = []
    for name, m in models.items():
        common = plans[name] | {"name": name, "layout": layouts[name].split(": ", 1)[1]}
        common |= {"ideal": dense_bytes / read_bytes(m), "torch_ppl": torch_perplexity(m, windows)}
        common["identity_params"] = gguf_layout(m).added_identity_params
        rows += [common | {"type": q} | res[f"{name} {q}"] for q in QUANTS]
    settings = {"threads": THREADS, "rounds": ROUNDS, "prefill": PREFILL, "decode": DECODE}
    return settings | {"windows": WINDOWS, "window": WINDOW, "rows": rows}


def table(data: dict) -> str:
    """Speed-ups over dense of the same type, beside the ideal, and both perplexities."""
    dense = {r["type"]: r for r in data["rows"] if r["name"] == "dense"}
    lines = [
        f"{provenance(data)}: SmolLM2-135M in llama.cpp, {data['threads']} threads, medians of "
        f"{data['rounds']} interleaved rounds; prefill {data['prefill']} tokens, decode "
        f"{data['decode']}; perplexity on {data['windows']} × {data['window']} held-out tokens "
        "from llama.cpp's logits beside PyTorch's (float32) on the same windows",
        "",
        "| model | removed (non-emb.) | GGUF layout | type | ideal | prefill tokens/s | × dense "
        "| decode tokens/s | × dense | % of ideal (decode) | PyTorch decode × dense "
        "| perplexity | PyTorch perplexity |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    flagged = False
    for r in data["rows"]:
        d = dense[r["type"]]
        noisy = max(r["spread"].values()) > 0.1 or max(d["spread"].values()) > 0.1
        w, flagged = (" ⚠" if noisy else ""), flagged or noisy
        pre, dec = r["prefill"] / d["prefill"], r["decode"] / d["decode"]
        lines.append(
            f"| {r['name']} | {r['removed']:.1%} | {r['layout']} | {r['type']} | {r['ideal']:.3f} "
            f"| {r['prefill']:.0f} | {pre:.3f}{w} | {r['decode']:.1f} | {dec:.3f}{w} "
            f"| {dec / r['ideal']:.0%} | {r['torch_decode']:.3f} | {r['ppl']:.2f} "
            f"| {r['torch_ppl']:.2f} |"
        )
    note = "\n⚠: the rounds of this figure or of dense spread over 10%"
    return "\n".join(lines + ([note] if flagged else []))


if __name__ == "__main__":
    show("llamacpp", table, measure)
