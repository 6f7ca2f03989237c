"""``depthcut export RUN --format F --out DIR``: one format module each, written atomically and
verified in its runtime before the directory appears."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from depthcut import log
from depthcut.errors import ConfigError
from depthcut.formats import gguf_file as gguf
from depthcut.formats import hetero, hf
from depthcut.formats.common import load_run
from depthcut.formats.llamacpp import IMATRIX, Imatrix

FORMATS = ("hf", "hf-hetero", "gguf")


def _writers(fmt: str, quant: str, imatrix: Imatrix | None):
    if fmt == "hf":
        return hf.write_hf, hf.verify_hf
    if fmt == "hf-hetero":
        return hetero.write_hetero, hetero.verify_hetero

    def verify(model, folder, tokenizer):
        return gguf.verify_gguf(model, folder / gguf.gguf_name(quant), quant, tokenizer)

    return (lambda m, t, d: gguf.write_gguf(m, t, d, quant, imatrix)), verify


def check_request(fmt: str, quant: str | None) -> str:
    """The GGUF type to write (f32 unless given); refuses unknown formats and types."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if quant is not None and fmt != "gguf":
        raise ConfigError("--quant applies to --format gguf only")
    quant = quant or "f32"
    gguf.check_quant(quant)
    return quant


def export_run(
    run: str | Path,
    fmt: str,
    out: str | Path,
    quant: str | None = None,
    verify: bool = True,
    overwrite: bool = False,
    imatrix: Imatrix | None = None,
) -> Path:
    """Write ``run`` (a depthcut output) in ``fmt`` into ``out``; verify it in its runtime.
    A ``+imatrix`` GGUF type computes llama.cpp's importance matrix on ``imatrix``'s
    calibration text (default: :class:`~depthcut.formats.llamacpp.Imatrix`)."""
    from depthcut.io import atomic_dir, prepare_output

    quant = check_request(fmt, quant)
    target = prepare_output(out, overwrite)
    if fmt == "gguf" and verify:
        gguf.llamacpp.require_binding()
    if quant.endswith(IMATRIX):
        gguf.llamacpp.require_tools()
        imatrix = imatrix or Imatrix()
    else:
        imatrix = None  # only a +imatrix type uses (and records) one
    model, tokenizer = load_run(run)
    write, check = _writers(fmt, quant, imatrix)

    def build(tmp: Path) -> None:
        note = {
            "format": fmt,
            "source": str(Path(run).resolve()),
            "layout": write(model, tokenizer, tmp),
        }
        if fmt == "gguf":
            note["type"] = quant
        if imatrix is not None:
            note["imatrix"] = {"file": "imatrix.gguf"} | asdict(imatrix)
        if verify:
            note["verified"] = check(model, tmp, tokenizer)
            log.status(f"depthcut: verified {target.name}: {note['verified']}")
        (tmp / "export.json").write_text(json.dumps(note, indent=2) + "\n")

    return atomic_dir(target, build, overwrite)
