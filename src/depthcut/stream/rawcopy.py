"""Copy tensors between safetensors files as bytes: the header is rewritten (new names, new
offsets) and each tensor's bytes are copied in chunks, so a copied tensor is byte-identical
by construction and never held in memory whole (a 152k-token embedding or LM head included).
The format: 8 bytes little-endian header length, the JSON header (dtype, shape, data offsets
relative to the end of the header; padded with spaces to a multiple of 8), then the data."""

from __future__ import annotations

import json
import struct
from pathlib import Path

CHUNK = 64 * 2**20


def read_header(file: Path) -> tuple[dict, int]:
    """(the header's tensor entries, the byte offset where the data starts)."""
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


def copy_tensors(source: Path, names: dict[str, str], dest: Path) -> None:
    """Write ``dest`` holding the tensors ``names`` ({source name: new name}) of ``source``."""
    header, start = read_header(source)
    out: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for old, new in names.items():
        begin, end = header[old]["data_offsets"]
        out[new] = {
            "dtype": header[old]["dtype"],
            "shape": header[old]["shape"],
            "data_offsets": [offset, offset + end - begin],
        }
        offset += end - begin
    text = json.dumps(out, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(source, "rb") as src, open(dest, "wb") as dst:
        dst.write(struct.pack("<Q", len(text)) + text)
        for old in names:
            begin, end = header[old]["data_offsets"]
            src.seek(start + begin)
            _copy(src, dst, end - begin)


def _copy(src, dst, size: int) -> None:
    while size > 0:
        piece = src.read(min(CHUNK, size))
        if not piece:
            raise OSError(f"{src.name}: truncated tensor data")
        dst.write(piece)
        size -= len(piece)


def same_bytes(a: Path, name_a: str, b: Path, name_b: str) -> bool:
    """Whether tensor ``name_a`` of ``a`` and ``name_b`` of ``b`` have the same dtype, shape
    and bytes (compared a chunk at a time)."""
    (ha, sa), (hb, sb) = read_header(a), read_header(b)
    ea, eb = ha[name_a], hb[name_b]
    if (ea["dtype"], ea["shape"]) != (eb["dtype"], eb["shape"]):
        return False
    (a0, a1), (b0, _) = ea["data_offsets"], eb["data_offsets"]
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(sa + a0)
        fb.seek(sb + b0)
        left = a1 - a0
        while left > 0:
            n = min(CHUNK, left)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True
