"""llama.cpp as depthcut uses it: the HF → GGUF converter vendored in the ``llama-cpp-python``
sdist (fetched once from the package index into ``DEPTHCUT_CACHE``), its quantizer and its
runtime through the ``llama_cpp`` binding (the ``llama`` extra; ``make llama`` builds it from
the sdist). Each runs in a subprocess: llama.cpp's logging stays off depthcut's stderr, and a
crash in native code becomes a one-line error.

    python -m depthcut.formats.llamacpp install   # the converter (and a check of the binding)
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from depthcut import log
from depthcut.formats.common import ExportError

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
VENDORED = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
QUANT_FTYPES = {"q4_k_m": 15, "q4_k_s": 14, "q5_k_m": 17, "q6_k": 18}
CONVERTER_TYPES = ("f32", "f16", "q8_0")
DRIVER = Path(__file__).with_name("gguf_convert.py")


def converter_dir() -> Path:
    """The vendored converter (``conversion/``, ``gguf-py/``), extracted once into the cache."""
    from depthcut.paths import cache_dir, fetch_file

    target = cache_dir(f"llama.cpp-{VERSION}")
    if (target / "conversion" / "deci.py").exists():
        return target
    sdist = fetch_file("llama-cpp-python", SDIST)
    with tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(VENDORED) and m.name[len(VENDORED) :].startswith(CONVERTER_PARTS)
        ]
        for member in members:
            member.name = member.name[len(VENDORED) :]
        tar.extractall(target, members=members, filter="data")
    return target


def require_binding() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise ExportError(
            "llama-cpp-python is not installed; run `make llama` (builds it from its sdist) "
            "or pass --no-verify"
        )


def _reason(stderr: str) -> str:
    """llama.cpp's own error line when it logged one, else the last line (a traceback's)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()] or ["no output"]
    native = [ln for ln in lines if ": error" in ln and not ln.startswith("Traceback")]
    return (native or lines)[-1][:300]


def _run(args: list[str], what: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise ExportError(f"{what} failed: {_reason(done.stderr)}")
    return done.stdout


def convert(hf_dir: Path, outfile: Path, outtype: str) -> None:
    """HF directory → GGUF through the vendored converter (f32, f16 or q8_0)."""
    args = [sys.executable, str(DRIVER), str(converter_dir()), str(hf_dir), str(outfile), outtype]
    _run(args, "llama.cpp's converter")


QUANTIZE = r"""
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3])
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params)
sys.exit(f"llama_model_quantize returned {rc}" if rc else 0)
"""


def quantize(source: Path, target: Path, kind: str) -> None:
    """llama.cpp's own quantizer (e.g. Q4_K_M) from an f32/f16 GGUF."""
    require_binding()
    _run(
        [sys.executable, "-c", QUANTIZE, str(source), str(target), str(QUANT_FTYPES[kind])],
        f"llama.cpp's {kind} quantizer",
    )


EVALUATE = r"""
import json, sys, numpy as np, llama_cpp
path, spec = sys.argv[1], json.loads(sys.argv[2])
llm = llama_cpp.Llama(model_path=path, n_ctx=spec["n_ctx"], n_batch=spec["n_ctx"],
                      n_threads=spec["threads"], logits_all=True, verbose=True,
                      type_k=spec["kv_type"], type_v=spec["kv_type"])
out = {"logprobs": [], "greedy": []}
for ids in spec["prompts"]:
    llm.reset()
    llm.eval(ids)
    scores = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    top = scores.max(axis=1, keepdims=True)
    logp = scores - top - np.log(np.exp(scores - top).sum(axis=1, keepdims=True))
    out["logprobs"].append(logp.astype(np.float32).tolist())
    tokens = []
    for _ in range(spec["new"]):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(nxt)
        llm.eval([nxt])
    out["greedy"].append(tokens)
json.dump(out, sys.stdout)
"""


def evaluate(path: Path, prompts: list[list[int]], new: int, threads: int = 2) -> dict:
    """Per prompt: log-probabilities at every position and ``new`` greedy tokens (cached)."""
    require_binding()
    spec = {"prompts": prompts, "new": new, "threads": threads, "kv_type": 0}  # f32 KV cache
    spec["n_ctx"] = max(len(p) for p in prompts) + new + 8
    return json.loads(
        _run(
            [sys.executable, "-c", EVALUATE, str(path), json.dumps(spec)],
            "loading the GGUF in llama.cpp",
        )
    )


def read_arrays(path: Path) -> dict:
    """The architecture, block count and per-layer arrays a GGUF declares."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str):
        field = reader.fields.get(key)
        if field is None:
            return None
        items = [field.parts[i].tolist() for i in field.data]
        flat = [x[0] if isinstance(x, list) and len(x) == 1 else x for x in items]
        return flat if len(flat) > 1 else flat[0]

    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    keys = {
        "block_count": "block_count",
        "heads": "attention.head_count",
        "kv_heads": "attention.head_count_kv",
        "ffn": "feed_forward_length",
    }
    return {"arch": arch} | {name: value(f"{arch}.{key}") for name, key in keys.items()}


if __name__ == "__main__":
    log.show_in_terminal()
    if sys.argv[1:] == ["install"]:
        log.result(f"llama.cpp converter: {converter_dir()}")
        require_binding()
        log.result("llama_cpp binding: installed")
