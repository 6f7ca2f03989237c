"""Reading depthcut's JSON artifacts (plans, scores, recipes) with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from depthcut.errors import ConfigError


def read_json(path: str | Path, what: str) -> Any:
    """The parsed JSON of ``path``; a missing or corrupt file is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what} file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a valid {what} file ({err.__class__.__name__})") from None


def check_version(found: Any, supported: int, what: str, path: str | Path = "") -> None:
    """Refuse a file written in another format version, saying which side is newer."""
    if found == supported:
        return
    where = f"{path}: " if path else ""
    if isinstance(found, int) and found > supported:
        raise ConfigError(
            f"{where}{what} format version {found} is newer than this depthcut reads "
            f"({supported}); upgrade depthcut"
        )
    raise ConfigError(f"{where}{what} format version {found!r} is not supported ({supported})")
