"""Where depthcut keeps converted models and downloaded data (``DEPTHCUT_CACHE``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("DEPTHCUT_CACHE", Path.home() / ".cache" / "depthcut"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
