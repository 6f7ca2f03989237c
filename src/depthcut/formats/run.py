"""``depthcut export RUN --format F --out DIR``: one format module each, written atomically and
verified in its runtime before the directory appears."""

from __future__ import annotations

import json
from pathlib import Path

from depthcut import log
from depthcut.errors import ConfigError
from depthcut.formats import gguf_file as gguf
from depthcut.formats import hetero, hf
from depthcut.formats.common import load_run

FORMATS = ("hf", "hf-hetero", "gguf")


def _writers(fmt: str, quant: str):
    if fmt == "hf":
        return hf.write_hf, hf.verify_hf
    if fmt == "hf-hetero":
        return hetero.write_hetero, hetero.verify_hetero

    def verify(model, folder, tokenizer):
        return gguf.verify_gguf(model, folder / f"model-{quant}.gguf", quant, tokenizer)

    return (lambda m, t, d: gguf.write_gguf(m, t, d, quant)), verify


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
) -> Path:
    """Write ``run`` (a depthcut output) in ``fmt`` into ``out``; verify it in its runtime."""
    from depthcut.io import atomic_dir, prepare_output

    quant = check_request(fmt, quant)
    target = prepare_output(out, overwrite)
    if fmt == "gguf" and verify:
        gguf.llamacpp.require_binding()
    model, tokenizer = load_run(run)
    write, check = _writers(fmt, quant)

    def build(tmp: Path) -> None:
        note = {
            "format": fmt,
            "source": str(Path(run).resolve()),
            "layout": write(model, tokenizer, tmp),
        }
        if fmt == "gguf":
            note["type"] = quant
        if verify:
            note["verified"] = check(model, tmp, tokenizer)
            log.status(f"depthcut: verified {target.name}: {note['verified']}")
        (tmp / "export.json").write_text(json.dumps(note, indent=2) + "\n")

    return atomic_dir(target, build, overwrite)
