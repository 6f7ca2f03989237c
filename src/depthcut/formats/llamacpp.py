"""llama.cpp as depthcut uses it: the HF → GGUF converter vendored in the ``llama-cpp-python``
sdist (fetched once from the package index into ``DEPTHCUT_CACHE``), its quantizer and its
runtime through the ``llama_cpp`` binding (the ``llama`` extra; ``make llama`` builds it from
the sdist), and two of llama.cpp's own programs built from the same sources: ``llama-imatrix``
(the importance matrix of a calibration text) and ``llama-quantize`` (k-quants that use it).
Each runs in a subprocess: llama.cpp's logging stays off depthcut's stderr, and a crash in
native code becomes a one-line error.

    python -m depthcut.formats.llamacpp install   # converter, imatrix / quantize tools, binding

The tools are compiled once (cmake; ``CMAKE_ARGS`` as for the binding) into a build cache,
``DEPTHCUT_BUILD_CACHE`` (default ``~/.cache/depthcut-build``) — kept, like pip's wheel cache,
when ``DEPTHCUT_CACHE`` is emptied — and copied beside the Python interpreter.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from depthcut import log
from depthcut.formats.common import ExportError

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
VENDORED = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
QUANT_FTYPES = {"q4_k_m": 15, "q4_k_s": 14, "q5_k_m": 17, "q6_k": 18}
CONVERTER_TYPES = ("f32", "f16", "q8_0")
IMATRIX = "+imatrix"  # a k-quant type with this suffix is quantized with an importance matrix
TOOLS = ("llama-imatrix", "llama-quantize")
TOOL_CMAKE = (  # a static, tools-only build (no server, tests or examples; no network code)
    "-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF "
    "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF "
    "-DLLAMA_OPENSSL=OFF"
)
DRIVER = Path(__file__).with_name("gguf_convert.py")


def _extract(target: Path, parts: tuple[str, ...]) -> None:
    """The vendored llama.cpp paths starting with one of ``parts`` (all: ``("",)``)."""
    from depthcut.paths import fetch_file

    sdist = fetch_file("llama-cpp-python", SDIST)
    with tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(VENDORED) and m.name[len(VENDORED) :].startswith(parts)
        ]
        for member in members:
            member.name = member.name[len(VENDORED) :]
        tar.extractall(target, members=members, filter="data")


def converter_dir() -> Path:
    """The vendored converter (``conversion/``, ``gguf-py/``), extracted once into the cache."""
    from depthcut.paths import cache_dir

    target = cache_dir(f"llama.cpp-{VERSION}")
    if not (target / "conversion" / "deci.py").exists():
        _extract(target, CONVERTER_PARTS)
    return target


def tool_path(name: str) -> Path | None:
    """An installed llama.cpp program: beside the interpreter (``make llama``), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    return Path(found) if found else None


def require_tools() -> None:
    """Checked before any work that needs llama.cpp's imatrix / quantize programs."""
    missing = [name for name in TOOLS if tool_path(name) is None]
    if missing:
        raise ExportError(
            f"llama.cpp's {' and '.join(missing)} not installed; run `make llama` (or "
            "`python -m depthcut.formats.llamacpp install`: builds them from the llama.cpp "
            "sources of the binding's sdist)"
        )


def _build_dir(flags: str) -> Path:
    root = Path(os.environ.get("DEPTHCUT_BUILD_CACHE", Path.home() / ".cache" / "depthcut-build"))
    key = hashlib.sha256(f"{VERSION} {flags}".encode()).hexdigest()[:12]
    return root / f"llama.cpp-{VERSION}-{key}"


def build_tools() -> Path:
    """Compile llama-imatrix and llama-quantize once (cmake, the sdist's vendored sources) into
    the build cache and copy them beside the interpreter; returns the folder they are in."""
    flags = f"{TOOL_CMAKE} {os.environ.get('CMAKE_ARGS', '')}".strip()
    build = _build_dir(flags)
    binaries = [build / "build" / "bin" / name for name in TOOLS]
    if not all(b.exists() for b in binaries):
        source = build / "src"
        if not (source / "CMakeLists.txt").exists():
            _extract(source, ("",))
        cmake = ["cmake", "-S", str(source), "-B", str(build / "build"), *shlex.split(flags)]
        _run(cmake, "configuring llama.cpp's tools (cmake)")
        jobs = str(os.cpu_count() or 1)
        _run(
            ["cmake", "--build", str(build / "build"), "--target", *TOOLS, "-j", jobs],
            "building llama.cpp's tools",
        )
    target = Path(sys.executable).parent
    for binary in binaries:
        shutil.copy2(binary, target / binary.name)
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


def quantize(source: Path, target: Path, kind: str, imatrix: Path | None = None) -> None:
    """llama.cpp's own quantizer (e.g. Q4_K_M) from an f32/f16 GGUF: through the binding, or
    with an importance matrix file through ``llama-quantize`` (the binding cannot pass one)."""
    if imatrix is None:
        require_binding()
        args = [sys.executable, "-c", QUANTIZE, str(source), str(target)]
        _run([*args, str(QUANT_FTYPES[kind])], f"llama.cpp's {kind} quantizer")
        return
    require_tools()
    args = [str(tool_path("llama-quantize")), "--imatrix", str(imatrix), str(source)]
    _run([*args, str(target), kind.upper(), str(os.cpu_count() or 1)], "llama-quantize")


@dataclass(frozen=True)
class Imatrix:
    """The text llama.cpp's importance matrix is computed on: ``chunks`` windows of ``ctx``
    tokens of the calibration part of ``source`` (a packaged text name or a text file) — never
    the evaluation part."""

    source: str = "wiki"
    chunks: int = 64
    ctx: int = 256

    def __post_init__(self) -> None:
        if self.chunks <= 0 or self.ctx <= 1:
            raise ExportError(f"imatrix: chunks={self.chunks}, ctx={self.ctx} must be positive")


def importance_matrix(model: Path, spec: Imatrix, target: Path, threads: int) -> None:
    """``llama-imatrix`` on ``model`` (an unquantized GGUF) over the calibration text."""
    from depthcut.data import text_split

    require_tools()
    text = target.with_suffix(".txt")
    text.write_text(text_split(spec.source, "calibration"), encoding="utf-8")
    args = [str(tool_path("llama-imatrix")), "-m", str(model), "-f", str(text), "-o", str(target)]
    sizes = ["-c", str(spec.ctx), "--chunks", str(spec.chunks)]
    try:
        _run([*args, *sizes, "-t", str(threads), "--no-ppl", "-lv", "0"], "llama-imatrix")
    finally:
        text.unlink()


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
        log.result(f"llama.cpp tools {', '.join(TOOLS)}: {build_tools()}")
        require_binding()
        log.result("llama_cpp binding: installed")
